"""Steps: traces (client and fluent, tags, search, the UI's trace artifact) and prompts."""
from __future__ import annotations

from typing import Any

from wf_steps import Ctx, state_of, step, trace_id_of

# --- traces ----------------------------------------------------------------------------------------------------

@step("trace: decorated function (fluent)")
def trace_fluent(c: Ctx) -> Any:
    import mlflow

    @mlflow.trace(name="compat-fn")
    def answer(question: str) -> str:
        with mlflow.start_span(name="inner"):
            return question.upper()

    out = answer("ok")
    c.state["fluent_trace"] = mlflow.get_last_active_trace_id()
    found = [t.info for t in c.client.search_traces([c.state["exp"]]) if trace_id_of(t.info) == c.state["fluent_trace"]]
    return {"output": out, "stored": [state_of(info) for info in found]}


@step("trace: start (client)")
def trace_start(c: Ctx) -> Any:
    span = c.client.start_trace("compat-trace", inputs={"q": 1}, experiment_id=c.state["exp"])
    c.state["trace"] = trace_id_of(span)


@step("trace: end (client)")
def trace_end(c: Ctx) -> Any:
    c.client.end_trace(c.state["trace"], outputs={"a": 2})
    # the client logs (does not raise) a failed export: read back what the server stored
    found = [t.info for t in c.client.search_traces([c.state["exp"]]) if trace_id_of(t.info) == c.state["trace"]]
    return [state_of(info) for info in found]


@step("trace: set tag")
def trace_set_tag(c: Ctx) -> Any:
    c.client.set_trace_tag(c.state["trace"], "reviewed", "yes")


@step("trace: get")
def trace_get(c: Ctx) -> Any:
    trace = c.client.get_trace(c.state["trace"])
    return {"spans": [s.name for s in trace.data.spans], "tag": trace.info.tags.get("reviewed")}


@step("trace: get the decorated function's trace")
def trace_get_fluent(c: Ctx) -> Any:
    return sorted(s.name for s in c.client.get_trace(c.state["fluent_trace"]).data.spans)


@step("trace: delete tag")
def trace_delete_tag(c: Ctx) -> Any:
    c.client.delete_trace_tag(c.state["trace"], "reviewed")


@step("trace: search")
def trace_search(c: Ctx) -> Any:
    return sorted(trace_id_of(t.info) in (c.state["trace"], c.state["fluent_trace"])
                  for t in c.client.search_traces([c.state["exp"]]))


@step("trace: the UI's trace artifact")
def trace_ui_artifact(c: Ctx) -> Any:
    data = c.http_get("/ajax-api/2.0/mlflow/get-trace-artifact", {"request_id": c.state["trace"]})
    return len(data.get("spans", []))


# --- prompts ---------------------------------------------------------------------------------------------------

@step("prompt: register")
def prompt_register(c: Ctx) -> Any:
    import mlflow

    c.state["prompt"] = f"alpha-prompt-{c.uid}"
    return mlflow.register_prompt(c.state["prompt"], "Hello {{name}}").version


@step("prompt: register a second version")
def prompt_register_v2(c: Ctx) -> Any:
    import mlflow

    return mlflow.register_prompt(c.state["prompt"], "Hi {{name}}!").version


@step("prompt: load a version")
def prompt_load(c: Ctx) -> Any:
    import mlflow

    return mlflow.load_prompt(f"prompts:/{c.state['prompt']}/1").template


@step("prompt: set alias")
def prompt_set_alias(c: Ctx) -> Any:
    import mlflow

    mlflow.set_prompt_alias(c.state["prompt"], "production", 2)


@step("prompt: load by alias")
def prompt_load_alias(c: Ctx) -> Any:
    import mlflow

    return mlflow.load_prompt(f"prompts:/{c.state['prompt']}@production").template


@step("search: prompts", since="3.1")
def prompt_search(c: Ctx) -> Any:
    import mlflow

    return [p.name for p in mlflow.search_prompts(f"name = '{c.state['prompt']}'")]


@step("prompt: delete alias")
def prompt_delete_alias(c: Ctx) -> Any:
    import mlflow

    mlflow.delete_prompt_alias(c.state["prompt"], "production")
