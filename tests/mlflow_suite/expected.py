"""The tests of MLflow's REST suite that end differently through the gate, and why: each a documented design
choice (README, "What each request needs" and the paragraph after it). Filled from the runs of run.py;
a test id is matched by its name without the parameters."""
from __future__ import annotations

FORCED_LOCATION = "forced artifact location: the client's artifact_location is dropped"
FORCED_CREATOR = "forced creator: mlflow.user / user_id is the caller"
ADMIN_ONLY = "admin-only family (gateway secrets, endpoints, model definitions)"
UNIFORM = "an id the caller cannot resolve (missing) is refused like another team's object"
SOURCE = "policy: a version's source must be a runs:/, models:/ or mlflow-artifacts: URI the caller can read"
MANAGE = "policy: default: edit gives no manage (delete, restore, rename)"

_CREATOR = {name: FORCED_CREATOR for name in (
    "test_create_and_query_registered_model_flow", "test_set_delete_registered_model_tag_flow",
    "test_create_logged_model", "test_delete_logged_model_tag", "test_set_logged_model_tags",
    "test_legacy_start_and_end_trace_v2", "test_create_promptlab_run_handler_returns_expected_results",
    "test_create_run_all_args", "test_create_run_defaults")}
_BOTH = {**_CREATOR, "test_create_get_search_experiment": FORCED_LOCATION}

# mode -> test name -> reason
EXPECTED: dict[str, dict[str, str]] = {
    "admin": _BOTH,
    "member": {
        **_BOTH,
        **{name: MANAGE for name in (
            "test_delete_registered_model_flow", "test_update_registered_model_flow", "test_delete_logged_model",
            "test_delete_restore_experiment", "test_evaluation_dataset_delete", "test_rename_experiment",
            "test_search_experiments")},
        **{name: UNIFORM for name in (      # fake run ids: `runs:/run_id/...` sources, `fake_run_id`, run 123
            "test_latest_models", "test_search_model_versions_filter_string", "test_search_model_versions_max_results",
            "test_search_model_versions_order_by", "test_delete_tag", "test_create_logged_model")},
        **{name: SOURCE for name in (
            "test_create_model_version_model_id", "test_create_model_version_with_file_uri",
            "test_create_model_version_with_path_source")},
        **{name: ADMIN_ONLY for name in (
            "test_create_and_get_secret", "test_create_and_update_compound_secret_via_rest",
            "test_create_secret_with_dict_value", "test_delete_secret", "test_list_secret_infos", "test_update_secret",
            "test_update_secret_with_dict_value", "test_get_secrets_config_with_custom_passphrase",
            "test_get_secrets_config_with_default_passphrase", "test_model_definitions",
            "test_update_model_definition_provider")},
    },
}


def explain(mode: str, test: str) -> str | None:
    """The documented reason `test` ends differently in `mode`, or None."""
    name = test.split("::")[-1].split("[")[0]
    return EXPECTED.get(mode, {}).get(name)
