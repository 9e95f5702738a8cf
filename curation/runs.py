"""The run model: what a dataset's ``runs`` table says, parsed once, for the CLI and the app alike.

A run is one row of the ``runs`` table (analysis, selection, reward-train, reward-score). Its
``run_id`` is unique (a primary key: :meth:`curation.store.Store.record_run` upserts). An analysis
run's id is a hash of its config and the dataset fingerprint, so the same config on the same data
is the same run; each analysis run records the steps it has completed (``outputs["steps"]``),
and running more steps of the same config adds to that list instead of writing a second row.

Rules the rest of the code relies on:

- :func:`latest` returns the newest run *of the current data* that has the steps a caller needs:
  a partial run (``analyze --steps quality --seed 1``) never hides a complete one from ``select``.
- :func:`best_analysis` is the run the app shows: the newest complete run, else the newest that
  selection can use, else the newest at all.
- :func:`get` refuses an unknown id with the ids that exist.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable

from curation import reward
from curation import schema as S
from curation.errors import StateError

#: the analysis steps, in the order they run (each writes per-sample columns and side tables)
STEPS = ("prototypes", "density", "map", "quality", "confounders")
#: a step that reads another step's output
REQUIRES = {"density": "prototypes", "confounders": "prototypes"}
#: steps a selection reads (prototype bands and FPS ranks; density for tail scores and duplicates)
SELECTION_NEEDS = ("prototypes", "density")


@dataclass(frozen=True)
class RunRecord:
    """One parsed row of the ``runs`` table.

    Attributes
    ----------
    run_id, kind, created, fingerprint, version : str
    config, timings, outputs : dict
        The JSON columns, parsed. ``timings`` holds seconds only; facts such as why fidelity is
        unavailable are ``outputs``.
    """

    run_id: str
    kind: str
    created: str
    fingerprint: str
    version: str
    config: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)

    @property
    def steps(self) -> tuple[str, ...]:
        """Completed analysis steps (empty for other kinds)."""
        return tuple(self.outputs.get("steps", ()))

    def has(self, needs: Iterable[str]) -> bool:
        return set(needs) <= set(self.steps)

    def table(self, which: str) -> str | None:
        """Name of one of the run's tables ("samples", "prototypes", "knn", "confounders")."""
        return self.outputs.get("tables", {}).get(which)


def _load(text, what: str, run_id: str) -> dict:
    if text is None or (isinstance(text, float) and text != text):
        return {}
    try:
        value = json.loads(text)
    except (TypeError, json.JSONDecodeError) as e:
        raise StateError(f"run {run_id}: its {what} is not valid JSON ({e}). Fix: run it again "
                         f"(`python -m curation analyze DB --force` for an analysis).") from None
    if not isinstance(value, dict):
        raise StateError(f"run {run_id}: its {what} is not a JSON object. Fix: run it again.")
    return value


def parse(row) -> RunRecord:
    """A :class:`RunRecord` from one row (a mapping or a pandas row) of the runs table."""
    rid = str(row["run_id"])
    return RunRecord(run_id=rid, kind=str(row["kind"]), created=str(row["created"]),
                     fingerprint=str(row["fingerprint"]), version=str(row["version"]),
                     config=_load(row["config"], "config", rid), timings=_load(row["timings"], "timings", rid),
                     outputs=_load(row["outputs"], "outputs", rid))


def list_runs(store, kind: str | None = None, current_only: bool = False) -> list[RunRecord]:
    """Runs, oldest first; ``current_only`` keeps those of the dataset's current content."""
    df = store.runs(kind)
    out = [parse(r) for r in df.to_dict("records")]
    if current_only:
        fp = store.fingerprint
        out = [r for r in out if r.fingerprint == fp]
    return out


def get(store, run_id: str, kind: str | None = None) -> RunRecord:
    """The run ``run_id``; a :class:`StateError` naming the runs that exist when it is unknown."""
    runs = list_runs(store, kind)
    for r in runs:
        if r.run_id == run_id:
            return r
    known = ", ".join(r.run_id for r in runs[-5:]) or "none"
    raise StateError(f"no {kind or ''} run {run_id!r} in dataset {store.name} (latest: {known}). "
                     f"Fix: omit it to use the latest, or pass one of those.".replace("no  run", "no run"))


def latest(store, kind: str = "analysis", needs: Iterable[str] = ()) -> RunRecord | None:
    """The newest run of ``kind`` on the current data that completed every step in ``needs``."""
    needs = tuple(needs)
    for r in reversed(list_runs(store, kind, current_only=True)):
        if r.has(needs):
            return r
    return None


def latest_run(store, needs: Iterable[str] = ()) -> str | None:
    """Id of :func:`latest` analysis run with ``needs``, or None."""
    r = latest(store, "analysis", needs)
    return r.run_id if r else None


def best_analysis(store) -> RunRecord | None:
    """The run the app shows: newest complete, else newest selection can use, else newest."""
    for needs in (STEPS, SELECTION_NEEDS, ()):
        r = latest(store, "analysis", needs)
        if r is not None:
            return r
    return None


def require(store, run_id: str | None, needs: Iterable[str] = SELECTION_NEEDS) -> RunRecord:
    """The given analysis run (checked to have ``needs``) or the latest one that has them.

    Raises :class:`StateError` with the command to run when there is none.
    """
    needs = tuple(needs)
    if run_id:
        r = get(store, run_id, "analysis")
        if r.fingerprint != store.fingerprint:
            raise StateError(f"analysis run {run_id} was computed on other content of {store.name} "
                             f"(the dataset was replaced since). Fix: run `python -m curation analyze "
                             f"{store.path}` again.")
        missing = [s for s in needs if s not in r.steps]
        if missing:
            raise StateError(f"analysis run {run_id} lacks the step(s) {', '.join(missing)}. Fix: run "
                             f"`python -m curation analyze {store.path} --steps {','.join(missing)}` with "
                             f"its config, or omit --analysis-run to use the latest complete run.")
        return r
    r = latest(store, "analysis", needs)
    if r is None:
        have = latest(store, "analysis")
        if have is None:
            raise StateError(f"dataset {store.name} has no analysis yet. "
                             f"Fix: run `python -m curation analyze {store.path}`.")
        raise StateError(f"no analysis run of {store.name} has the step(s) {', '.join(needs)} (the latest, "
                         f"{have.run_id}, has {', '.join(have.steps) or 'none'}). Fix: run "
                         f"`python -m curation analyze {store.path}`.")
    return r


def reward_status(store) -> dict:
    """Ratings, trained reward models (with held-out r) and which model scored the pool.

    Returns a dict: ``n_ratings``, ``n_ok``, ``models`` (list of {model_id, created, source,
    metrics}), ``scored_by`` (model id or None) and ``scored_run`` (run id or None).
    """

    out = {"n_ratings": 0, "n_ok": 0, "models": [], "scored_by": None, "scored_run": None}
    if store.has_table(S.REWARD_RATINGS):
        r = store.read_table(S.REWARD_RATINGS, ["status"])
        out["n_ratings"], out["n_ok"] = len(r), int((r["status"] == "ok").sum())
    ms = reward.models(store)
    if ms is not None:
        for m in ms.itertuples():
            try:
                metrics = json.loads(m.metrics)
            except (TypeError, json.JSONDecodeError):
                metrics = {}
            out["models"].append({"model_id": m.model_id, "created": m.created, "source": m.source,
                                  "metrics": metrics})
    scored = list_runs(store, "reward-score")
    if scored and store.has_table(S.REWARD_SCORES):
        out["scored_run"] = scored[-1].run_id
        out["scored_by"] = scored[-1].config.get("model_id")
    return out

