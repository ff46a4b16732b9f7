"""The Envoy bootstrap: both checks, retries elsewhere, every replica in both clusters."""

from __future__ import annotations

import json
from typing import Any

import pytest

from jpki_va.server.app.envoy_config import (
    GRPC_CLUSTER,
    HTTP_CLUSTER,
    ROTATION_SERVICE,
    Balancing,
    Replica,
    envoy_bootstrap,
    render,
)

REPLICAS = [Replica(f"127.0.0.1:{5000 + n}", f"127.0.0.1:{6000 + n}") for n in range(3)]


def _cluster(config: Any, name: str) -> Any:
    clusters = config["static_resources"]["clusters"]
    return next(c for c in clusters if c["name"] == name)


def test_each_cluster_checks_every_replica_its_own_way() -> None:
    config: Any = envoy_bootstrap(REPLICAS, Balancing())
    grpc_cluster = _cluster(config, GRPC_CLUSTER)
    (check,) = grpc_cluster["health_checks"]
    assert check["grpc_health_check"] == {"service_name": ROTATION_SERVICE}
    assert check["unhealthy_threshold"] == check["healthy_threshold"] == 1
    (http_check,) = _cluster(config, HTTP_CLUSTER)["health_checks"]
    assert http_check["http_health_check"] == {"path": "/health"}
    ports = [
        e["endpoint"]["address"]["socket_address"]["port_value"]
        for e in grpc_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert ports == [5000, 5001, 5002]


def test_calls_are_retried_on_another_replica() -> None:
    config: Any = envoy_bootstrap(REPLICAS, Balancing(retries=3))
    listeners = config["static_resources"]["listeners"]
    for listener in listeners:
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        (route,) = manager["route_config"]["virtual_hosts"][0]["routes"]
        policy = route["route"]["retry_policy"]
        assert policy["num_retries"] == 3
        assert "reset" in policy["retry_on"] and "connect-failure" in policy["retry_on"]
        assert policy["retry_host_predicate"][0]["name"].endswith("previous_hosts")


def test_render_is_json() -> None:
    assert json.loads(render(REPLICAS, Balancing()))["admin"]


@pytest.mark.parametrize(
    ("replicas", "balancing", "message"),
    [
        ([], Balancing(), "at least one replica"),
        ([Replica("nohost", "127.0.0.1:1")], Balancing(), "is not HOST:PORT"),
    ],
)
def test_bad_settings_are_refused(
    replicas: list[Replica], balancing: Balancing, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        envoy_bootstrap(replicas, balancing)


def test_bad_balancing_is_refused() -> None:
    with pytest.raises(ValueError, match="retries"):
        Balancing(retries=-1)
