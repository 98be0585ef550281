"""The string options: one ``str`` Enum each, a docstring per member, Literal aliases and choices in agreement."""

from __future__ import annotations

import ast
import inspect
import typing
from pathlib import Path

import pytest

from bayesvlm_explain import options
from bayesvlm_explain.estimation import LIKELIHOODS
from bayesvlm_explain.evaluation.active_learning import STRATEGIES
from bayesvlm_explain.explain.decomposition import RANK_BY
from bayesvlm_explain.marglik import MODES
from bayesvlm_explain.options import CHOICES, OPTIONS, PredictiveKind, check_option

LITERALS = {"predictive": options.Predictive, "link": options.Link, "variance": options.Variance,
            "mode": options.MargLikMode, "likelihood": options.Likelihood, "method": options.PixelMethod,
            "objective": options.Objective, "strategy": options.Strategy, "rank_by": options.RankBy}


def test_literal_aliases_spell_the_enum_values():
    assert set(LITERALS) | {"target"} == set(OPTIONS)
    for name, alias in LITERALS.items():
        assert typing.get_args(alias) == CHOICES[name], name
    targets = typing.get_args(options.MomentTarget) + typing.get_args(options.EntropyTarget)
    assert targets == CHOICES["target"] == options.MOMENT_TARGETS + options.ENTROPY_TARGETS


def test_modules_use_the_one_definition():
    assert (LIKELIHOODS, MODES, STRATEGIES, RANK_BY) == (CHOICES["likelihood"], CHOICES["mode"],
                                                        CHOICES["strategy"], CHOICES["rank_by"])


def test_every_member_has_a_docstring():
    """A string literal follows each member's assignment (read from the source: Enum members keep none)."""
    tree = ast.parse(Path(inspect.getsourcefile(options)).read_text())
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name in
                {k.__name__ for k in OPTIONS.values()}):
        assert ast.get_docstring(cls), cls.name
        body = cls.body[1:]
        members = [i for i, n in enumerate(body) if isinstance(n, ast.Assign)]
        assert len(members) == len(getattr(options, cls.name)), cls.name
        for i in members:
            doc = body[i + 1] if i + 1 < len(body) else None
            assert isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and doc.value.value.strip(), (
                cls.name, ast.unparse(body[i]))


def test_members_are_their_strings():
    assert PredictiveKind.MC == "mc" and str(PredictiveKind.MC) == "mc" and {"mc": 1}[PredictiveKind.MC] == 1
    out = check_option("predictive", PredictiveKind.PROBIT)
    assert out == "probit" and type(out) is str
    assert check_option("predictive", "map") == "map"
    with pytest.raises(ValueError, match="unknown predictive 'laplace'; choose one of 'probit', 'mc', 'map'"):
        check_option("predictive", "laplace")
    with pytest.raises(ValueError, match="unknown objective"):
        check_option("objective", 3)
