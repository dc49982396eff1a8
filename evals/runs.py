"""Evaluation runs in the workspace database: created, saved a batch at a time, finished, read back."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ragapp.evals.results import ItemResult, Problem, RunResult
from ragapp.evals.summary import aggregate
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from ragapp.errors import UsageError
from ragapp.store import EvalItemRow, EvalRunRow, Store, utcnow

FINISHED = "completed"


def _item(row: EvalItemRow) -> ItemResult:
    return ItemResult(
        position=row.position,
        item_id=row.item_id,
        question=row.question,
        reference=row.reference,
        prediction=row.prediction,
        expected_sources=list(row.expected_sources or []),
        citations=list(row.citations or []),
        metrics=dict(row.metrics or {}),
        timings=dict(row.timings or {}),
        error=row.error,
        sentences=list(row.sentences or []),  # NULL in items stored before schema version 5
        abstained=bool(row.abstained),
        judge=row.judge,
    )


def _run(row: EvalRunRow, items: list[ItemResult], saved: int | None = None) -> RunResult:
    return RunResult(
        id=row.id,
        name=row.name,
        kind=row.kind,
        status=row.status,
        dataset=row.dataset,
        started_at=row.started_at,
        finished_at=row.finished_at,
        seconds=row.seconds,
        config=dict(row.config or {}),
        models=dict(row.models or {}),
        aggregates=dict(row.aggregates or {}),
        problems=[Problem(**p) for p in row.problems or []],
        items=items,
        total=row.total,
        saved=len(items) if saved is None else saved,
    )


class RunStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    # -- finding runs ------------------------------------------------------------------------------
    def row(self, ref: str | int) -> EvalRunRow:
        """A run by name, or by id when `ref` is a number that names no run."""
        with self.store.session() as s:
            row = s.scalar(select(EvalRunRow).where(EvalRunRow.name == str(ref)))
            if row is None and str(ref).isdigit():
                row = s.get(EvalRunRow, int(ref))
        if row is None:
            raise UsageError(f"no evaluation run {str(ref)!r} in this workspace (see `ragapp eval list`)")
        return row

    def exists(self, name: str) -> bool:
        with self.store.session() as s:
            return s.scalar(select(EvalRunRow.id).where(EvalRunRow.name == name)) is not None

    def resumable(
        self, kind: str, dataset_hash: str, config: dict[str, Any], models: dict[str, Any]
    ) -> list[EvalRunRow]:
        """Unfinished runs over the same data with the same settings and models, newest first."""
        with self.store.session() as s:
            rows = s.scalars(
                select(EvalRunRow)
                .where(EvalRunRow.kind == kind, EvalRunRow.dataset_hash == dataset_hash, EvalRunRow.status != FINISHED)
                .order_by(EvalRunRow.id.desc())
            ).all()
        return [r for r in rows if r.config == config and r.models == models]

    def next_name(self, stem: str) -> str:
        stem = re.sub(r"[^\w.-]+", "-", stem).strip("-") or "run"
        with self.store.session() as s:
            taken = set(s.scalars(select(EvalRunRow.name).where(EvalRunRow.name.like(f"{stem}-%"))))
        n = 1
        while f"{stem}-{n}" in taken:
            n += 1
        return f"{stem}-{n}"

    def list(self) -> list[RunResult]:
        """Every run, newest first, without items."""
        with self.store.session() as s:
            rows = s.scalars(select(EvalRunRow).order_by(EvalRunRow.id.desc())).all()
            counts = s.execute(select(EvalItemRow.run_id, func.count()).group_by(EvalItemRow.run_id)).all()
        done = {run_id: n for run_id, n in counts}
        return [_run(r, [], saved=done.get(r.id, 0)) for r in rows]

    def load(self, ref: str | int) -> RunResult:
        row = self.row(ref)
        with self.store.session() as s:
            items = s.scalars(select(EvalItemRow).where(EvalItemRow.run_id == row.id).order_by(EvalItemRow.position))
            return _run(row, [_item(i) for i in items])

    # -- writing -----------------------------------------------------------------------------------
    def create(
        self,
        name: str,
        kind: str,
        dataset: str,
        dataset_hash: str,
        total: int,
        config: dict[str, Any],
        models: dict[str, Any],
        problems: Sequence[Problem],
    ) -> int:
        row = EvalRunRow(
            name=name,
            kind=kind,
            dataset=dataset,
            dataset_hash=dataset_hash,
            total=total,
            config=config,
            models=models,
            problems=[{"line": p.line, "reason": p.reason} for p in problems],
        )
        with self.store.session() as s:
            s.add(row)
            try:
                s.commit()
            except IntegrityError:
                raise UsageError(f"an evaluation run named {name!r} already exists; choose another --name") from None
            return row.id

    def done_positions(self, run_id: int) -> set[int]:
        with self.store.session() as s:
            return set(s.scalars(select(EvalItemRow.position).where(EvalItemRow.run_id == run_id)))

    def save_items(self, run_id: int, items: Sequence[ItemResult]) -> None:
        """One transaction per batch: a kill loses at most the batch being answered."""
        with self.store.session() as s:
            s.add_all(EvalItemRow(run_id=run_id, **i.to_dict()) for i in items)
            s.commit()

    def set_status(self, run_id: int, status: str, add_seconds: float = 0.0) -> RunResult:
        """Record how a session on the run ended, with the aggregates of everything saved so far."""
        with self.store.session() as s:
            row = s.get(EvalRunRow, run_id)
            assert row is not None
            items = [_item(i) for i in s.scalars(select(EvalItemRow).where(EvalItemRow.run_id == run_id))]
            row.status = status
            row.seconds += add_seconds
            row.aggregates = aggregate(items)
            row.finished_at = utcnow() if status == FINISHED else None
            s.commit()
        return self.load(run_id)

    def mark_running(self, run_id: int) -> None:
        with self.store.session() as s:
            row = s.get(EvalRunRow, run_id)
            assert row is not None
            row.status = "running"
            s.commit()

    def delete(self, ref: str | int) -> str:
        row = self.row(ref)
        with self.store.session() as s:
            s.execute(delete(EvalItemRow).where(EvalItemRow.run_id == row.id))
            s.execute(delete(EvalRunRow).where(EvalRunRow.id == row.id))
            s.commit()
        return row.name
