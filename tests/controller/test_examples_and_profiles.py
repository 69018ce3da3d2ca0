"""The example GPUMix files, the CRD schema, and profiles from ConfigMaps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gpumix.controller.optimize import profiles_from_config_map
from gpumix.controller.plan import ProfileSet, ProfilesUnavailable
from gpumix.controller.spec import Slo, parse_spec

REPO = Path(__file__).resolve().parents[2]


def example_docs() -> list[dict[str, Any]]:
    return [
        d
        for p in sorted(REPO.glob("examples/gpumix*.yaml"))
        for d in yaml.safe_load_all(p.read_text())
        if d
    ]


def profiles_config_map() -> dict[str, Any]:
    """What `kubectl create configmap --from-file` makes of the example profiles."""
    files = [REPO / "examples/profiles/a100.yaml", REPO / "examples/profiles/a40.yaml"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "llama2-7b-profiles", "namespace": "default"},
        "data": {f.name: f.read_text() for f in files},
    }


def test_examples_parse() -> None:
    docs = [d for d in example_docs() if d.get("kind") == "GPUMix"]
    assert len(docs) >= 2
    for doc in docs:
        parse_spec(doc)


async def test_examples_pass_the_crd_schema(emu: Any) -> None:
    for doc in example_docs():
        resp = await emu.request(
            "POST",
            f"/apis/gpumix.io/v1alpha1/namespaces/{doc['metadata']['namespace']}/gpumixes",
            doc,
        )
        assert resp.status == 201, resp.body
    bad = example_docs()[0]
    bad["metadata"]["name"] = "bad"
    bad["spec"]["mode"] = "fast"
    bad["spec"]["headroom"] = 1.5
    resp = await emu.request("POST", "/apis/gpumix.io/v1alpha1/namespaces/default/gpumixes", bad)
    assert resp.status == 422
    assert "spec.mode" in str(resp.body) and "spec.headroom" in str(resp.body)


def test_profiles_from_a_config_map_with_the_optimizer_readers() -> None:
    cm = profiles_config_map()
    got = profiles_from_config_map(cm, "llama2-7b-profiles", None, Slo(e2e_seconds=20))
    assert isinstance(got, ProfileSet)
    assert got.gpu_types == {"A100", "A40"}
    # a stricter SLO zeroes the cells whose measured latency is above it
    strict = profiles_from_config_map(cm, "llama2-7b-profiles", None, Slo(e2e_seconds=5))
    assert isinstance(strict, ProfileSet)
    loose_cells = {
        (p.gpu_type, b.input_tokens, b.output_tokens): b.max_rps
        for p in got.payload  # type: ignore[attr-defined]
        for b in p.buckets
    }
    strict_cells = {
        (p.gpu_type, b.input_tokens, b.output_tokens): b.max_rps
        for p in strict.payload  # type: ignore[attr-defined]
        for b in p.buckets
    }
    assert strict_cells[("A40", 128, 1024)] == 0.0 < loose_cells[("A40", 128, 1024)]
    missing = profiles_from_config_map(None, "nope", None)
    assert isinstance(missing, ProfilesUnavailable) and "nope" in missing.reason
    broken = profiles_from_config_map({"data": {"x": "kind: GPUProfile\n"}}, "cm", None)
    assert isinstance(broken, ProfilesUnavailable) and "cm key x" in broken.reason
    no_key = profiles_from_config_map(cm, "llama2-7b-profiles", "l20.yaml")
    assert isinstance(no_key, ProfilesUnavailable) and "l20.yaml" in no_key.reason


async def test_config_map_profiles_through_the_controller(emu: Any, api: Any) -> None:
    from controller_helpers import (
        condition,
        deployment,
        gmx_status,
        node,
        running,
        settings,
        wait_for,
    )

    from gpumix.controller.optimize import solve_mix

    emu.create(profiles_config_map())
    emu.create(node("a100-0", "A100"))
    emu.create(node("a40-0", "A40"))
    emu.create(deployment("static-a100", "A100", model="llama2-7b-static"))
    emu.create(deployment("static-a40", "A40", model="llama2-7b-static"))
    doc = next(d for d in example_docs() if d["metadata"]["name"] == "llama2-7b-static")
    emu.create(doc)
    async with running(api, settings(), solver=solve_mix) as run:
        await wait_for(
            lambda: gmx_status(emu, "llama2-7b-static").get("solverStatus") == "OPTIMAL",
            what="a plan from ConfigMap profiles",
        )
        st = gmx_status(emu, "llama2-7b-static")
        assert condition(st, "Ready")["status"] == "True"
        assert condition(st, "Scaling")["reason"] == "RecommendOnly"
        assert st["costPerHour"] <= st["bestSingleTypeCostPerHour"]
        # the dashboards read the same numbers from the metrics
        registry = run.controller.metrics.registry
        key = {"namespace": "default", "gpumix": "llama2-7b-static"}
        best = registry.get_sample_value("gpumix_best_single_type_cost_per_hour", key)
        assert best == st["bestSingleTypeCostPerHour"]
        solver = registry.get_sample_value("gpumix_solver_status", {**key, "status": "OPTIMAL"})
        assert solver == 1.0
        assert sum(e["recommendedReplicas"] for e in st["plan"]) >= 1
