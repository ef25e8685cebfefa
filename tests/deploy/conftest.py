"""Rendered manifests, built once per test session: every kustomize overlay and every chart variant."""

from __future__ import annotations

import pytest
from k8s_render import CHART_VARIANTS, OVERLAYS, build_overlay, chart_values, manifests_copy, render_chart


@pytest.fixture(scope="session")
def manifests_dir(tmp_path_factory: pytest.TempPathFactory):
    return manifests_copy(tmp_path_factory.mktemp("kustomize"))


@pytest.fixture(scope="session")
def overlays(manifests_dir) -> dict[str, list[dict]]:
    """overlay name -> objects of `kubectl kustomize manifests/overlays/<name>`."""
    return {overlay: build_overlay(manifests_dir, overlay) for overlay in OVERLAYS}


@pytest.fixture(scope="session")
def charts() -> dict[str, list[dict]]:
    """variant name (helm/neurovit/ci/<name>-values.yaml) -> rendered objects."""
    return {variant: render_chart(chart_values(variant)) for variant in CHART_VARIANTS}


@pytest.fixture(scope="session")
def rendered(overlays, charts) -> dict[str, list[dict]]:
    """Every rendering, labelled "kustomize/<overlay>" or "helm/<variant>"."""
    return {
        **{f"kustomize/{k}": v for k, v in overlays.items()},
        **{f"helm/{k}": v for k, v in charts.items()},
    }
