"""The first of a model group: when its selector would capture a sibling on another GPU
type (gpumix/rules/model_selector.py)."""

from __future__ import annotations

from test_rule_selector_overlap import POLICY, dep

from gpumix.kube.objects import DeploymentView, view_of
from gpumix.rules import model_selector


def test_model_selector_short_names_only_match_whole_values() -> None:
    def view(name: str, selector: dict[str, str]) -> DeploymentView:
        d = dep(name, selector, labels={"model.aibrix.ai/name": "llama"}, gpu="A100", gpus=1)
        v = view_of(d, POLICY)
        assert isinstance(v, DeploymentView)
        return v

    model = {"model.aibrix.ai/name": "llama"}
    assert model_selector.selects_model_group(view("a", model), POLICY)  # "a" is in "llama"
    assert not model_selector.selects_model_group(view("a", {**model, "app": "a"}), POLICY)
    assert not model_selector.selects_model_group(
        view("llama-a100", {**model, "app": "llama-a100-vllm"}), POLICY
    )
    assert model_selector.check(view("b", model), POLICY)[0].fixable
