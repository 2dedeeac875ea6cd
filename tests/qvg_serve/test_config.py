"""AppConfig: the one pydantic model at the edge builds the engine and scheduler dataclasses."""

from __future__ import annotations

import dataclasses
import json

import pytest
from pydantic import ValidationError

from qvg_serve.engine.config import EngineConfig
from qvg_serve.serve.config import AppConfig, EngineSettings, SchedulerSettings, parse_api_keys
from scheduler.config import Priority, SchedulerConfig, TenantConfig


def test_defaults_build_the_dataclass_defaults():
    cfg = AppConfig.from_args({})
    assert cfg.engine_config() == EngineConfig()
    assert cfg.scheduler_config() == SchedulerConfig()
    assert AppConfig.from_args(None) == cfg


@pytest.mark.parametrize(
    ("settings", "dataclass"),
    [(EngineSettings, EngineConfig), (SchedulerSettings, SchedulerConfig)],
)
def test_every_dataclass_field_is_configurable(settings, dataclass):
    fields = {f.name for f in dataclasses.fields(dataclass)}
    missing = fields - set(settings.model_fields)
    assert not missing, f"add {sorted(missing)} to {settings.__name__} in qvg_serve/config.py"
    assert set(settings.model_fields) == fields


@pytest.mark.parametrize(
    ("args", "key"),
    [
        ({"engin": {}}, "engin"),
        ({"engine": {"modle": "tiny"}}, "engine.modle"),
        ({"scheduler": {"tenants": {"acme": {"cap": 3}}}}, "scheduler.tenants.acme.cap"),
        ({"deployment": {"ray_actor_options": {"gpus": 1}}}, "deployment.ray_actor_options.gpus"),
    ],
)
def test_unknown_keys_are_rejected_naming_the_key(args, key):
    with pytest.raises(ValidationError) as err:
        AppConfig.from_args(args)
    assert key in str(err.value)
    assert err.value.errors()[0]["type"] == "extra_forbidden"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"engine": {"gpu_memory_fraction": 1.5}}, "gpu_memory_fraction"),
        ({"engine": {"kv_cache_memory_bytes": 0}}, "kv_cache_memory_bytes"),
        ({"engine": {"formats": ["qvg-int2"]}}, "formats"),
        ({"engine": {"centroids": 300}}, "centroids"),
        ({"scheduler": {"max_batch_streams": 0}}, "max_batch_streams"),
        ({"scheduler": {"low_watermark": 0.95}}, "low_watermark"),
        ({"scheduler": {"rungs": ["encode", "bogus"]}}, "rungs"),
        ({"scheduler": {"early_format": "fp8"}}, "early_format"),
        ({"scheduler": {"priority_weights": {"urgent": 2.0}}}, "priority_weights"),
        ({"scheduler": {"tenants": {"a": {"page_cap": 1, "page_floor": 2}}}}, "page_cap"),
        ({"server": {"port": 70000}}, "port"),
        ({"server": {"auth": "maybe"}}, "auth"),
        ({"server": {"max_body_bytes": 10}}, "max_body_bytes"),
        ({"deployment": {"num_replicas": 0}}, "num_replicas"),
        (
            {"deployment": {"autoscaling_config": {"min_replicas": 3, "max_replicas": 2}}},
            "min_replicas",
        ),
    ],
)
def test_bad_values_name_the_field(args, field):
    with pytest.raises(ValueError) as err:
        AppConfig.from_args(args)
    assert field in str(err.value)


@pytest.mark.parametrize(
    ("host", "auth", "enabled"),
    [
        ("127.0.0.1", "auto", False),
        ("localhost", "auto", False),
        ("::1", "auto", False),
        ("0.0.0.0", "auto", True),
        ("::", "auto", True),
        ("10.1.2.3", "auto", True),
        ("0.0.0.0", False, False),
        ("127.0.0.1", True, True),
    ],
)
def test_auth_auto_is_on_off_loopback(host, auth, enabled):
    cfg = AppConfig.from_args({"server": {"host": host, "auth": auth}})
    assert cfg.server.auth_enabled() is enabled
    # keys set turn "auto" on even on loopback (serve/keys.py); an explicit bool still wins
    assert cfg.server.auth_enabled(keys_set=True) is (enabled if auth != "auto" else True)


def test_default_server_is_local_and_open():
    server = AppConfig.from_args({}).server
    assert (server.host, server.port, server.auth_enabled()) == ("127.0.0.1", 8000, False)
    assert server.max_body_bytes == 64 * 1024


def test_api_keys_come_from_the_named_env_var():
    server = AppConfig.from_args({"server": {"api_keys_env": "MY_KEYS"}}).server
    env = {"MY_KEYS": " k1:acme, k2:globex ,", "QVG_API_KEYS": "other:x"}
    assert server.api_keys(env) == {"k1": "acme", "k2": "globex"}
    assert server.api_keys({}) == {}


@pytest.mark.parametrize("text", ["nocolon", ":tenant", "key:", "a:b,a:c"])
def test_bad_api_key_pairs_fail_without_echoing_the_key(text):
    with pytest.raises(ValueError, match="QVG_API_KEYS") as err:
        parse_api_keys(text, "QVG_API_KEYS")
    assert "nocolon" not in str(err.value)


def test_tenants_and_priorities_map_through():
    cfg = AppConfig.from_args(
        {
            "scheduler": {
                "tenants": {"acme": {"weight": 2.0, "page_cap": 100, "page_floor": 10}},
                "priority_weights": {"high": 8.0, "0": 0.5},
                "rungs": ["encode", "refuse"],
            }
        }
    )
    sched = cfg.scheduler_config()
    assert sched.tenant("acme") == TenantConfig(weight=2.0, page_cap=100, page_floor=10)
    assert sched.tenant("nobody") == TenantConfig()
    assert dict(sched.priority_weights) == {
        Priority.LOW: 0.5,
        Priority.NORMAL: 2.0,
        Priority.HIGH: 8.0,
    }
    assert sched.rungs == frozenset({"encode", "refuse"})


def test_engine_fields_map_through():
    args = {
        "model": "self-forcing-1.3b",
        "kv_cache_memory_bytes": None,
        "cpu_offload_bytes": 1 << 30,
    }
    engine = AppConfig.from_args({"engine": args}).engine_config()
    assert engine == EngineConfig(**args)


def test_deployment_serve_options():
    dep = AppConfig.from_args({"deployment": {"num_replicas": 2}}).deployment
    assert dep.serve_options()["num_replicas"] == 2
    scaled = AppConfig.from_args(
        {"deployment": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 4}}}
    ).deployment.serve_options()
    assert "num_replicas" not in scaled and scaled["autoscaling_config"]["max_replicas"] == 4


def test_json_schema_exports_every_section_strictly():
    schema = AppConfig.json_schema()
    json.dumps(schema)  # serializable
    assert set(schema["properties"]) == {
        "engine",
        "scheduler",
        "server",
        "deployment",
        "durability",
    }
    assert schema["additionalProperties"] is False
    assert all(d.get("additionalProperties") is False for d in schema["$defs"].values())
    sink = schema["$defs"]["SchedulerSettings"]["properties"]["sink_pages"]
    assert sink["default"] == SchedulerConfig().sink_pages and "sink" in sink["description"]


def test_config_round_trips_through_json():
    cfg = AppConfig.from_args({"scheduler": {"tenants": {"acme": {"weight": 3.0}}}})
    again = AppConfig.from_args(json.loads(cfg.model_dump_json()))
    assert again.scheduler_config() == cfg.scheduler_config()
