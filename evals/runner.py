"""Batch evaluation: answer every dataset question through `App.ask_batch` (the `ask` path, batched),
score each answer, and save the results a batch at a time so that an interrupted run can continue.
`eval score` attributes answers written elsewhere to the workspace's passages (`App.attribute`) so that
they get the same groundedness metrics; an optional LLM judge (ragapp.evals.judge) adds faithfulness.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragapp.evals.dataset import Dataset, Example, load_dataset
from ragapp.evals.metrics import grounding_metrics, perplexity, retrieval_metrics, rouge, sentence_bleu
from ragapp.evals.results import ItemResult, Metrics, RunResult
from ragapp.evals.runs import FINISHED, RunStore
from tqdm import tqdm

from ragapp.errors import RagappError, ScoringUnsupported, UsageError
from ragapp.generators import GenerationConfig
from ragapp.locks import exclusive_lock, held

if TYPE_CHECKING:
    from ragapp.evals.judge import Judge

    from ragapp.answer import Answer
    from ragapp.app import App

# Questions per generation call. On a CPU decoding is bound by reading the weights, once per step for the
# whole batch: 24 questions took 62 s at 4, 50 s at 8, 43 s at 16 and 24 (SmolLM2-135M, one core).
DEFAULT_BATCH = 16


def answer_metrics(prediction: str, reference: str, stem: bool = True) -> Metrics:
    """ROUGE-1/2/L (F1, precision, recall) and sentence BLEU of one answer."""
    return {**rouge(prediction, reference, stem=stem), "bleu": sentence_bleu(prediction, reference).score}


def _batches(examples: Sequence[Example], size: int) -> Iterator[list[Example]]:
    for start in range(0, len(examples), size):
        yield list(examples[start : start + size])


class _Session:
    """One sitting of work on a stored run. It holds the run's lock file, so two processes never answer
    the same run; its status and wall time are recorded however it ends."""

    def __init__(self, runs: RunStore, run_id: int, workspace: Path) -> None:
        self.runs, self.run_id = runs, run_id
        self.lock_path = lock_path(workspace, run_id)
        self.result: RunResult | None = None

    @contextmanager
    def working(self) -> Iterator[None]:
        with exclusive_lock(self.lock_path, busy=self._busy):
            self.runs.mark_running(self.run_id)
            started = time.perf_counter()
            status = "failed"
            try:
                yield
                status = FINISHED
            except KeyboardInterrupt:
                status = "interrupted"
                raise
            finally:
                self.result = self.runs.set_status(self.run_id, status, time.perf_counter() - started)
                if status == FINISHED:
                    self.lock_path.unlink(missing_ok=True)

    def _busy(self) -> UsageError:
        return UsageError(f"evaluation run {self.runs.row(self.run_id).name!r} is being answered by another process")


def lock_path(workspace: Path, run_id: int) -> Path:
    return workspace / f"eval-run-{run_id}.lock"


def _busy(workspace: Path, run_id: int) -> bool:
    """Whether another process holds the run's lock (a run left 'running' by a killed process is not busy)."""
    return held(lock_path(workspace, run_id))


def _open_run(
    runs: RunStore,
    workspace: Path,
    kind: str,
    dataset: Dataset,
    name: str | None,
    config: dict[str, Any],
    models: dict[str, Any],
) -> int:
    """The run to work on: an unfinished one with the same data, settings and models is continued."""
    if name is not None and runs.exists(name):
        existing = runs.row(name)
        if existing.status == FINISHED:
            raise UsageError(f"evaluation run {name!r} is already complete; choose another --name")
        if existing.kind != kind or existing.config != config or existing.models != models:
            raise UsageError(
                f"evaluation run {name!r} was started with other settings or models; "
                "continue it with the same ones, or choose another --name"
            )
        if existing.dataset_hash != dataset.fingerprint:
            raise UsageError(f"evaluation run {name!r} was started on a different version of the dataset")
        return existing.id
    if name is None:
        for row in runs.resumable(kind, dataset.fingerprint, config, models):
            if not _busy(workspace, row.id):
                return row.id
        name = runs.next_name(dataset.path.stem)
    return runs.create(
        name, kind, str(dataset.path), dataset.fingerprint, len(dataset.examples), config, models, dataset.problems
    )


def evaluate(
    app: App,
    dataset: Dataset | str | Path,
    name: str | None = None,
    k: int | None = None,
    generation: dict[str, Any] | GenerationConfig | None = None,
    batch_size: int = DEFAULT_BATCH,
    stem: bool = True,
    progress: bool = False,
    judge: Judge | None = None,
) -> RunResult:
    """Answer and score every question of `dataset`; the run is stored in `app`'s workspace and returned.

    Rerunning with the same dataset, settings and models (and the same `name`, if one was given)
    continues an interrupted run instead of starting over. With a `judge`, answers also get `faithfulness`.
    """
    if isinstance(dataset, (str, Path)):
        dataset = load_dataset(dataset)
    if batch_size < 1:
        raise UsageError("batch size must be at least 1")
    sampling = app.sampling(generation)
    k = k or app.config.retrieval.k
    c = app.config
    config = {
        "retrieval": {**c.retrieval.model_dump(), "k": k},
        "generation": {**sampling.model_dump(), **app.generation_info()},
        "prompt": c.prompt.model_dump(),
        "chunking": c.chunking.model_dump(),
        "index": c.index.model_dump(),
        "answer": c.answer.model_dump(),
        "rouge_stem": stem,
    }
    store = app.open_store()
    app.search(dataset.examples[0].question, 1)  # fails early, before a run exists, on an empty workspace
    models = {"embedding": app.embedder.fingerprint, "generator": app.generator.model_id}
    if app.reward_model is not None:
        models["reward"] = app.reward_model.model_id
    if app.reranker is not None:
        models["reranker"] = app.reranker.fingerprint
    _add_judge(judge, config, models)
    runs = RunStore(store)
    run_id = _open_run(runs, app.workspace, "pipeline", dataset, name, config, models)
    done = runs.done_positions(run_id)
    todo = [e for e in dataset.examples if e.position not in done]
    session = _Session(runs, run_id, app.workspace)
    with (
        session.working(),
        app.generator.keep_prompts(),  # the reference's perplexity reuses what answering read of the prompt
        tqdm(
            total=len(dataset.examples),
            initial=len(done),
            unit="q",
            desc="eval",
            disable=not progress,
            dynamic_ncols=True,
        ) as bar,
    ):
        for batch in _batches(todo, batch_size):
            runs.save_items(run_id, add_judgements(judge, _answer_batch(app, batch, k, sampling, stem)))
            bar.update(len(batch))
    assert session.result is not None
    return session.result


def _answer_batch(app: App, batch: list[Example], k: int, sampling: GenerationConfig, stem: bool) -> list[ItemResult]:
    """Answer a batch in one generation call; if that fails on bad input, answer one by one to isolate it."""
    try:
        answers: list[Answer | str] = list(app.ask_batch([e.question for e in batch], k, sampling))
    except (RagappError, ValueError):
        answers = []
        for example in batch:
            try:
                answers.extend(app.ask_batch([example.question], k, sampling))
            except (RagappError, ValueError) as exc:
                answers.append(f"{type(exc).__name__}: {exc}")
    return add_rewards(app, [_score(app, e, a, k, stem) for e, a in zip(batch, answers, strict=True)])


def add_rewards(app: App, items: list[ItemResult]) -> list[ItemResult]:
    """The configured reward model's score of each answer to its question, as the `reward` metric."""
    reward_model = app.reward_model
    answered = [i for i in items if i.error is None and i.question]  # a reward is for an answer to a question
    if reward_model is not None and answered:
        scores = reward_model.score([i.question for i in answered], [i.prediction for i in answered])
        for item, score in zip(answered, scores, strict=True):
            item.metrics["reward"] = score
    return items


def _score(app: App, example: Example, answer: Answer | str, k: int, stem: bool) -> ItemResult:
    item = ItemResult(
        position=example.position,
        item_id=example.item_id,
        question=example.question,
        reference=example.reference,
        prediction="",
        expected_sources=example.sources,
    )
    if isinstance(answer, str):
        item.error = answer
        return item
    item.prediction = answer.answer
    item.citations = [asdict(c) for c in answer.citations]
    item.metrics = answer_metrics(answer.answer, example.reference, stem)
    if example.sources:
        ranked = [(h.source, h.anchor) for h in answer.hits]
        item.metrics.update(retrieval_metrics(ranked, example.sources, k))
    _add_grounding(app, item, answer)
    mark = time.perf_counter()
    try:
        nll, tokens = app.generator.reference_nll(answer.messages, example.reference)
    except ScoringUnsupported:  # e.g. an OpenAI-compatible server without prompt log-probabilities
        nll, tokens = 0.0, 0
    t = answer.timings
    item.metrics["perplexity"] = perplexity(nll, tokens) if tokens else None
    item.timings = {
        "retrieve_s": t["retrieve_s"],
        "generate_s": t["generate_s"],
        "latency_s": t["total_s"],
        "prompt_tokens": t["prompt_tokens"],
        "completion_tokens": t["completion_tokens"],
        "reference_tokens": tokens,
        "score_s": time.perf_counter() - mark,
    }
    return item


def _add_grounding(app: App, item: ItemResult, answer: Answer) -> None:
    """The answer's attributed sentences, whether it abstained, and the groundedness metrics they give."""
    item.sentences = [s.to_dict() for s in answer.sentences]
    item.abstained = answer.abstained
    item.metrics.update(grounding_metrics(answer, item.expected_sources, app.embedder.embed_queries))


def _judged_passages(item: ItemResult) -> list[tuple[int, str]]:
    """What the judge checks claims against: the cited passages, or all the generator saw if none is cited."""
    shown = [(int(c["n"]), str(c.get("text") or "")) for c in item.citations]
    cited = [(int(c["n"]), str(c.get("text") or "")) for c in item.citations if c.get("cited")]
    return cited or shown


def add_judgements(judge: Judge | None, items: list[ItemResult]) -> list[ItemResult]:
    """The judge's `faithfulness` and `judge_unparsed` of each answer that has sentences and passages.

    Other items (abstained, unattributed, failed) get None, so the metrics exist in every judged run;
    a judge that failed over HTTP leaves its message in `item.judge["error"]` and both metrics None."""
    if judge is None:
        return items
    for item in (i for i in items if i.error is None):
        item.metrics.update(faithfulness=None, judge_unparsed=None)
        passages = _judged_passages(item)
        if item.abstained or not item.sentences or not passages:
            continue
        judgement = judge.judge(item.question, item.prediction, passages)
        item.judge = judgement.to_dict()
        if judgement.error is None:
            item.metrics.update(faithfulness=judgement.faithfulness, judge_unparsed=judgement.unparsed)
    return items


def _add_judge(judge: Judge | None, config: dict[str, Any], models: dict[str, Any]) -> None:
    """A run judged by another model (or at another URL) is another run: it never continues this one."""
    if judge is not None:
        config["judge"] = {"url": judge.url}
        models["judge"] = judge.model


def _attributable(app: App) -> bool:
    """Whether `eval score` can attribute answers: the workspace has passages to attribute them to."""
    return app.open_store(create=True).has_chunks()


def _score_row(app: App, example: Example, stem: bool, attribute: bool) -> ItemResult:
    """One `eval score` row: answer metrics, and with a question and passages, attribution and groundedness.
    A prediction that is exactly `answer.not_found` (ragapp's own abstention) counts as abstained."""
    assert example.prediction is not None
    item = ItemResult(
        example.position,
        example.item_id,
        example.question,
        example.reference,
        example.prediction,
        example.sources,
        metrics=answer_metrics(example.prediction, example.reference, stem),
    )
    if attribute and example.question:
        answer = app.attribute(example.question, example.prediction)
        if answer.answer == app.config.answer.not_found.strip():
            cited = [replace(c, cited=False) for c in answer.citations]
            answer = replace(answer, citations=cited, sentences=[], abstained=True)
        item.citations = [asdict(c) for c in answer.citations]
        _add_grounding(app, item, answer)
    return item


def score_predictions(
    app: App,
    dataset: Dataset | str | Path,
    name: str | None = None,
    stem: bool = True,
    progress: bool = False,
    judge: Judge | None = None,
) -> RunResult:
    """Score answers produced elsewhere (`prediction` beside the reference); no generator is loaded
    (the reward model is, when one is configured). When the workspace has documents, rows with a question
    are attributed to the passages retrieved for it and get the groundedness metrics (and, with a `judge`,
    faithfulness).

    The run is stored in `app`'s workspace (created if needed) so it can be listed, compared and reported.
    """
    if isinstance(dataset, (str, Path)):
        dataset = load_dataset(dataset, need_prediction=True)
    runs = RunStore(app.open_store(create=True))
    attribute = _attributable(app)
    config: dict[str, Any] = {"rouge_stem": stem}
    models = {"reward": app.reward_model.model_id} if app.reward_model is not None else {}
    if attribute:  # the scores then depend on the passages, the embedding model and the attribution settings
        config.update(retrieval=app.config.retrieval.model_dump(), answer=app.config.answer.model_dump())
        models["embedding"] = app.embedder.fingerprint
    _add_judge(judge, config, models)
    run_id = _open_run(runs, app.workspace, "score", dataset, name, config, models)
    done = runs.done_positions(run_id)
    session = _Session(runs, run_id, app.workspace)
    todo = [e for e in dataset.examples if e.position not in done]
    size = 16 if attribute or judge else 256  # a kill loses at most one batch of embedding or judging work
    with (
        session.working(),
        tqdm(total=len(dataset.examples), initial=len(done), unit="item", desc="score", disable=not progress) as bar,
    ):
        for batch in _batches(todo, size):
            items = [_score_row(app, e, stem, attribute) for e in batch]
            runs.save_items(run_id, add_judgements(judge, add_rewards(app, items)))
            bar.update(len(batch))
    assert session.result is not None
    return session.result
