"""The service's parts without a server: keys, collections, the generation queue, upload names, conversations.

`condense` is exercised with a scripted generator (a fake, for control flow only); the real model's
rewriting is covered end to end in test_service_api.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from ragapp.answer import Answer, Quote, Sentence
from ragapp.cli import cli
from ragapp.cli.serve import is_loopback
from ragapp.errors import Conflict, NotFound, UsageError
from ragapp.service.collections import DEFAULT, Collections
from ragapp.service.conversations import Conversations, Turn, condense, history_from_messages
from ragapp.service.http_errors import ApiError
from ragapp.service.keys import KeyStore
from ragapp.service.limits import GenerationQueue, QueueFull
from ragapp.service.routes_documents import upload_name
from ragapp.store import ApiKeyRow, Store
from tests.servers import assert_attribution

# Tests that touch the store run on SQLite and PostgreSQL (`database`); the others once.
ON_BOTH_STORES = pytest.mark.usefixtures("database")


def test_keys_are_stored_hashed_and_scoped(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db'}")
    keys = KeyStore(store)
    assert not keys.required()
    secret, key = keys.create(["alpha"], name="bot")
    admin_secret, admin = keys.create(admin=True)
    assert keys.required()
    assert secret.startswith("rag_") and len(secret) > 40 and secret != admin_secret
    with store.session() as s:
        rows = s.scalars(select(ApiKeyRow)).all()
    assert all(secret not in (r.key_hash, r.prefix) and len(r.key_hash) == 64 for r in rows)
    found = keys.verify(secret)
    assert found is not None and found.can_read("alpha") and not found.can_read("beta") and not found.admin
    assert keys.verify(admin_secret).can_read("beta")  # type: ignore[union-attr]
    assert keys.verify(secret + "x") is None and keys.verify("") is None
    assert keys.revoke(key.id) and keys.verify(secret) is None
    assert keys.revoke(key.id)  # twice is fine
    assert not keys.revoke(999)
    keys.revoke(admin.id)
    assert keys.required()  # revoked keys still mean: keys are required


@ON_BOTH_STORES
def test_a_deleted_collection_leaves_every_key_scope(tmp_path: Path) -> None:
    """Defect 8: a key scoped to `beta` read a later collection named `beta` too."""
    from ragapp import App

    keys = KeyStore(App(tmp_path / "ws").open_store(create=True))
    only, only_key = keys.create(["beta"], name="beta bot")
    both, both_key = keys.create(["alpha", "beta"])
    other, _ = keys.create(["alpha"])
    admin, _ = keys.create(admin=True)
    assert sorted(keys.forget_collection("beta")) == sorted([only_key.id, both_key.id])
    assert keys.verify(only) is None  # revoked: it read nothing else
    assert next(k for k in keys.list() if k.id == only_key.id).collections == ("beta",)  # the record says what it read
    still = keys.verify(both)
    assert still is not None and still.collections == ("alpha",) and not still.can_read("beta")
    assert keys.verify(other).collections == ("alpha",)  # type: ignore[union-attr]
    assert keys.verify(admin).can_read("beta")  # type: ignore[union-attr]
    assert keys.forget_collection("beta") == []  # nothing left to change


@ON_BOTH_STORES
def test_collections_create_list_delete(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "ragapp.toml").write_text("[retrieval]\nk = 3\n", encoding="utf-8")
    collections = Collections(root)
    assert collections.names() == ["default"]
    collections.create("team-a")
    collections.create("b_2")
    assert collections.names() == ["default", "b_2", "team-a"]
    assert (root / "collections" / "team-a" / "ragapp.toml").read_text(encoding="utf-8") == "[retrieval]\nk = 3\n"
    assert collections.app("team-a").config.retrieval.k == 3
    with pytest.raises(Conflict):
        collections.create("team-a")
    with pytest.raises(Conflict):
        collections.create("default")
    for bad in ("", "Team", "../x", "a/b", ".hidden", "-x", "x" * 65):
        with pytest.raises(UsageError):
            collections.create(bad)
    with pytest.raises(NotFound):
        collections.app("nope")
    with pytest.raises(UsageError):
        collections.delete("default")
    app = collections.app("b_2")
    with app.ingest_lock(), pytest.raises(Conflict):
        collections.delete("b_2")  # an ingest is running in it
    assert collections.exists("b_2")
    collections.delete("b_2")
    assert collections.names() == ["default", "team-a"]
    assert not any(p.name.startswith(".") for p in (root / "collections").iterdir())  # no leftovers
    with pytest.raises(NotFound):
        collections.delete("b_2")


def test_generation_queue_rejects_beyond_its_size() -> None:
    queue = GenerationQueue(size=2)
    release = threading.Event()
    running = [queue.submit(release.wait), queue.submit(release.wait)]
    assert queue.depth == 2
    with pytest.raises(QueueFull) as full:
        queue.submit(lambda: None)
    assert full.value.retry_after >= 1
    release.set()
    assert [f.result(5) for f in running] == [True, True]
    assert queue.submit(lambda: 42).result(5) == 42  # room again
    queue.close()
    assert queue.depth == 0


@pytest.mark.parametrize(
    "name",
    ["../evil.md", "..", ".", "a/b.md", "/etc/passwd.txt", "a\\b.md", ".hidden.md", "x\x00.md", "", "é" * 200 + ".md"],
)
def test_upload_names_that_are_not_plain_file_names_are_refused(name: str) -> None:
    with pytest.raises(ApiError) as refused:
        upload_name(name)
    assert refused.value.status == 400


INVISIBLE_NAMES = {  # what it is: (a name with it, the character as the error message spells it)
    "right-to-left override": ("report\u202egpj.md", "U+202E"),
    "byte-order mark": ("\ufeffnotes.md", "U+FEFF"),
    "zero-width space": ("no\u200btes.md", "U+200B"),
    "zero-width joiner": ("a\u200db.md", "U+200D"),
    "left-to-right isolate": ("a\u2066b.md", "U+2066"),
    "soft hyphen": ("pass\u00adwords.md", "U+00AD"),
    "line separator": ("a\u2028b.md", "U+2028"),
    "NUL": ("x\x00.md", "U+0000"),
    "DEL": ("x\x7f.md", "U+007F"),
    "unpaired surrogate": ("x\udcff.md", "U+DCFF"),
}


@pytest.mark.parametrize(("name", "code"), INVISIBLE_NAMES.values(), ids=INVISIBLE_NAMES.keys())
def test_names_with_invisible_or_control_characters_are_refused(name: str, code: str, tmp_path: Path) -> None:
    """Defect 10: such names displayed as something else (RLO shows "reportdm.jpg"), and were accepted."""
    with pytest.raises(ApiError) as upload:
        upload_name(name)
    assert upload.value.status == 400 and code in str(upload.value)
    collection = name.removesuffix(".md").lower()
    with pytest.raises(UsageError) as refused:
        Collections(tmp_path).create(collection)
    assert code in str(refused.value) and "collection name" in str(refused.value)
    with pytest.raises(UsageError) as key:
        KeyStore(Store(f"sqlite:///{tmp_path / 'db'}")).create(["default"], name=name)
    assert code in str(key.value)
    assert not (tmp_path / "collections").exists() or not list((tmp_path / "collections").iterdir())


def test_upload_types_must_be_supported() -> None:
    assert upload_name("Notes 2024.md") == "Notes 2024.md"
    for name in ("tool.exe", "archive.tar.gz", "README"):
        with pytest.raises(ApiError) as refused:
            upload_name(name)
        assert refused.value.status == 415 and "unsupported file type" in str(refused.value)


class ScriptedGenerator:
    """A fake generator (control flow only): returns a scripted reply and records the prompts. Like the real
    backends it refuses a prompt over its context window; its "tokens" are words."""

    context_window = 8192

    def __init__(self, reply: str, context_window: int = 8192):
        self.reply = reply
        self.context_window = context_window
        self.prompts: list[list[dict[str, str]]] = []

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return sum(len(m["content"].split()) + 4 for m in messages)

    def generate(self, messages: list[dict[str, str]], config: object) -> str:
        tokens = self.count_tokens(messages)
        if tokens > self.context_window:
            raise ValueError(f"prompt has {tokens} tokens; the context window is {self.context_window}")
        self.prompts.append(messages)
        return self.reply


def test_condense_rewrites_follow_ups_only() -> None:
    generator = ScriptedGenerator(' "How do I undo ragapp ingest --sync?"\n')
    assert condense(generator, [], "What is it?") == "What is it?"  # type: ignore[arg-type]
    assert generator.prompts == []  # no history: no generation
    history = [Turn("What does --sync do?", "It removes documents whose files are gone [1].")]
    rewritten = condense(generator, history, "How do I undo it?")  # type: ignore[arg-type]
    assert rewritten == "How do I undo ragapp ingest --sync?"
    prompt = generator.prompts[0][-1]["content"]
    assert "User: What does --sync do?" in prompt and "Last question: How do I undo it?" in prompt
    assert condense(ScriptedGenerator("  "), history, "And then?") == "And then?"  # type: ignore[arg-type]
    rambling = ScriptedGenerator("x" * 1000)
    assert condense(rambling, history, "And then?") == "And then?"  # type: ignore[arg-type]


def test_condense_keeps_the_newest_turns_that_fit_the_window() -> None:
    """Defect 5: 50 long turns overflowed the context window (a ValueError, a 500 over HTTP)."""
    generator = ScriptedGenerator("How do I rotate the keys of turn 49?", context_window=2048)
    history = [Turn(f"question {i} " + "word " * 60, f"answer {i} " + "text " * 60) for i in range(50)]
    rewritten = condense(generator, history, "And then?")  # type: ignore[arg-type]
    assert rewritten == "How do I rotate the keys of turn 49?"
    prompt = generator.prompts[0]
    assert generator.count_tokens(prompt) <= 2048 - 48  # room left for the rewrite (CONDENSE.max_new_tokens)
    text = prompt[-1]["content"]
    assert "question 49 " in text and "answer 49 " in text  # the newest turns are kept...
    assert "question 0 " not in text  # ...the oldest dropped
    kept = [i for i in range(50) if f"question {i} " in text]
    assert kept == list(range(kept[0], 50)) and len(kept) > 5  # a contiguous newest run, as many as fit

    # the newest turn alone is too long: it is cut rather than dropped
    huge = [Turn("first " + "word " * 5000, "answer " + "text " * 5000)]
    generator.prompts.clear()
    assert condense(generator, huge, "And then?") == "How do I rotate the keys of turn 49?"  # type: ignore[arg-type]
    assert generator.count_tokens(generator.prompts[0]) <= 2048 - 48 and "first word" in str(generator.prompts[0])

    # a question too long for any history: asked as it is (answering it then says it is too long: a 400)
    generator.prompts.clear()
    long_question = "why " * 3000
    assert condense(generator, history, long_question) == long_question  # type: ignore[arg-type]
    assert generator.prompts == []
    # the configured window (generation.context_window) is the budget when it is smaller than the model's
    small = ScriptedGenerator("rewritten")
    assert condense(small, history, "q?", window=512) == "rewritten"  # type: ignore[arg-type]
    assert small.count_tokens(small.prompts[0]) <= 512 - 48


def test_history_from_openai_messages() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2 unanswered"},
        {"role": "user", "content": "q3"},
        {"role": "assistant", "content": "a3"},
    ]
    assert history_from_messages(messages) == [Turn("q1", "a1"), Turn("q3", "a3")]


@ON_BOTH_STORES
def test_conversations_belong_to_their_key_and_collection(tmp_path: Path) -> None:
    conversations = Conversations(Store(f"sqlite:///{tmp_path / 'db'}"))
    cid = conversations.start("alpha", key_id=1)
    conversations.add(cid, "q1", "q1", Answer("q1", "a1", [], "m", {}))
    sentence = Sentence("a2 is it.", [1], 0.9, Quote(7, 0, 9))
    conversations.add(cid, "q2", "standalone q2", Answer("q2", "a2 is it.", [], "m", {}, sentences=[sentence]))
    conversations.add(cid, "q3", "q3", Answer("q3", "Not found.", [], "m", {}, abstained=True))
    assert conversations.history(cid, "alpha", 1, last=1) == [Turn("q3", "Not found.")]
    assert conversations.history(cid, "alpha", 1, last=0) == []
    turns = conversations.turns(cid, "alpha", 1)
    assert [t["standalone_question"] for t in turns] == ["q1", "standalone q2", "q3"]
    assert [(t["sentences"], t["abstained"]) for t in turns] == [
        ([], False),
        (
            [{"text": "a2 is it.", "citations": [1], "support": 0.9, "quote": {"chunk_id": 7, "start": 0, "end": 9}}],
            False,
        ),
        ([], True),
    ]
    for collection, key_id in (("beta", 1), ("alpha", 2), ("alpha", None)):
        with pytest.raises(NotFound):
            conversations.history(cid, collection, key_id, last=4)
    conversations.drop_collection("alpha")
    with pytest.raises(NotFound):
        conversations.turns(cid, "alpha", 1)


def test_sentences_and_abstained_fit_the_response_schemas() -> None:
    """`sentences` and `abstained` as the response models pass them on (they drop what they do not declare),
    from a hand-made Answer: the shapes, not attribution (that is tested end to end in test_service_api.py)."""
    from ragapp.answer import Answer, Citation, Quote, Sentence
    from ragapp.service import schemas as s
    from ragapp.service.routes_chat import attribution

    passage = "Debian is a free operating system. It is old."
    citations = [
        Citation(1, "debian.md", None, None, "About", 7, 0.9, True, passage),
        Citation(2, "other.md", 3, None, None, 8, 0.2, False, "Unrelated."),
    ]
    sentences = [Sentence("Debian is free.", [1], 0.812345, Quote(7, 0, 34)), Sentence("Who knows?", [], 0.1, None)]
    answer = Answer("What is Debian?", "Debian is free.[1] Who knows?", citations, "m", sentences=sentences)
    expected = [
        {
            "text": "Debian is free.",
            "citations": [1],
            "support": 0.8123,
            "quote": {"chunk_id": 7, "start": 0, "end": 34},
        },
        {"text": "Who knows?", "citations": [], "support": 0.1, "quote": None},
    ]
    choice = {"index": 0, "message": {"content": answer.answer}, "finish_reason": "stop"}
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    chat = s.ChatResponse.model_validate(
        {"id": "c", "created": 0, "model": "default", "choices": [choice], "usage": usage, "conversation_id": "x"}
        | attribution(answer)
    ).model_dump(mode="json")
    query = s.QueryResponse.model_validate(
        answer.to_dict() | {"standalone_question": "q", "conversation_id": "x", "collection": "default", "chunks": []}
    ).model_dump(mode="json")
    for body in (chat, query):
        assert body["sentences"] == expected and body["abstained"] is False
        assert_attribution(body, answer.answer)
    assert passage[0:34] == "Debian is a free operating system."
    not_found = Answer("q", "Not in the documents.", [Citation(1, "a.md", None, None, None, 7, 0.1, False, "x")], "m")
    not_found.abstained = True
    assert attribution(not_found) | {"citations": []} == {"citations": [], "sentences": [], "abstained": True}
    quote = s.ChatResponse.model_json_schema()["$defs"]["Quote"]["properties"]
    assert all(quote[k]["description"] for k in ("chunk_id", "start", "end"))


def test_loopback_addresses() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.5", "example.com"]))


@ON_BOTH_STORES
def test_serve_refuses_other_addresses_without_a_key(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--workspace", str(tmp_path / "ws"), "serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "refusing to listen on 0.0.0.0 with no API key" in result.output


@ON_BOTH_STORES
def test_keys_cli(tmp_path: Path) -> None:
    ws = ["--workspace", str(tmp_path / "ws")]
    runner = CliRunner()
    assert runner.invoke(cli, [*ws, "keys", "list"]).output.startswith("No API keys")
    missing = runner.invoke(cli, [*ws, "keys", "create", "--collection", "nope"])
    assert missing.exit_code == 2 and "no collection named 'nope'" in missing.output
    assert runner.invoke(cli, [*ws, "keys", "create"]).exit_code == 2  # neither --collection nor --admin
    created = runner.invoke(cli, [*ws, "keys", "create", "--collection", "default", "--name", "bot"])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[0]
    assert secret.startswith("rag_")
    listed = runner.invoke(cli, [*ws, "keys", "list"]).output
    assert "bot" in listed and "active" in listed and secret not in listed
    assert runner.invoke(cli, [*ws, "keys", "revoke", "1"]).exit_code == 0
    assert "revoked" in runner.invoke(cli, [*ws, "keys", "list"]).output
    assert runner.invoke(cli, [*ws, "keys", "revoke", "7"]).exit_code == 2


@ON_BOTH_STORES
def test_the_job_worker_survives_database_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 1: `_next()` raised outside the worker's try (a database error), and the jobs thread died for good.

    The database errors are injected (a fault, not a fake store); the job itself is real: its collection
    was deleted, so it fails with that reason, which needs no model."""
    from sqlalchemy.exc import OperationalError

    from ragapp import App
    from ragapp.service.jobs import Jobs

    ws = tmp_path / "ws"
    store = App(ws).open_store(create=True)
    jobs = Jobs(store, Collections(ws, store))
    jobs.backoff_s = 0.05
    faults = {"_next": 2, "_run": 1, "_set": 1}  # how many calls of each fail, before they work again

    def failing(name: str) -> Any:
        real = getattr(jobs, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if faults[name]:
                faults[name] -= 1
                raise OperationalError("SELECT 1", {}, Exception(f"disk I/O error in {name}"))
            return real(*args, **kwargs)

        return call

    for name in faults:
        monkeypatch.setattr(jobs, name, failing(name))
    job = jobs.submit(jobs.new_id(), "gone", ["a.md"])
    jobs.start()
    try:
        deadline = time.monotonic() + 20
        while jobs.get(job["id"])["status"] not in ("completed", "failed") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert jobs._thread is not None and jobs._thread.is_alive()
        done = jobs.get(job["id"])
        assert done["status"] == "failed" and "no collection named 'gone'" in done["error"], done
        assert faults == {"_next": 0, "_run": 0, "_set": 0}  # every fault was met, and survived
        later = jobs.submit(jobs.new_id(), "gone", ["b.md"])  # and the worker still takes new jobs
        while jobs.get(later["id"])["status"] != "failed" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert jobs.get(later["id"])["status"] == "failed"
    finally:
        jobs.stop()


@ON_BOTH_STORES
def test_upload_outcomes_name_the_reason(tmp_path: Path) -> None:
    """What `GET /v1/collections/C/uploads` reports for files that were not ingested."""
    from ragapp import App
    from ragapp.service.jobs import Jobs
    from ragapp.store import IngestJobRow

    store = App(tmp_path / "ws").open_store(create=True)
    jobs = Jobs(store, Collections(tmp_path / "ws", store))
    problems = {"problems": [{"source": "bin.txt", "reason": "binary file"}], "warnings": []}
    with store.session() as s:
        s.add(IngestJobRow(id="j1", collection="c", status="failed", files=["a.md"], error="disk full"))
        s.add(IngestJobRow(id="j2", collection="c", status="completed", files=["bin.txt", "ok.md"], report=problems))
        s.add(IngestJobRow(id="j3", collection="other", status="queued", files=["x.md"]))
        s.commit()
    outcomes = jobs.outcomes("c")
    assert outcomes["a.md"] == {"job_id": "j1", "status": "failed", "reason": "disk full"}
    assert outcomes["bin.txt"]["reason"] == "binary file" and outcomes["ok.md"]["reason"] is None
    assert jobs.pending("other", "x.md") and not jobs.pending("c", "a.md")
    jobs.drop_collection("c")
    assert jobs.outcomes("c") == {} and jobs.pending("other", "x.md")


@ON_BOTH_STORES
def test_staging_folders_of_uploads_never_accepted_are_removed_at_start(tmp_path: Path) -> None:
    """A server killed between writing an upload's files and queueing its job left them in `.staging` for good."""
    import os

    from ragapp import App
    from ragapp.app import STAGING
    from ragapp.service.jobs import Jobs

    ws = tmp_path / "ws"
    store = App(ws).open_store(create=True)
    jobs = Jobs(store, Collections(ws, store))
    queued = jobs.new_id()
    for name in ("orphan", queued, "young"):
        (ws / STAGING / name).mkdir(parents=True)
        (ws / STAGING / name / "a.md").write_text("# a\n")
    for name in ("orphan", queued):  # older than the grace period
        os.utime(ws / STAGING / name, (time.time() - 3600, time.time() - 3600))
    jobs.submit(queued, DEFAULT, ["a.md"])
    jobs._drop_unqueued_staging()
    assert not (ws / STAGING / "orphan").exists()
    assert (ws / STAGING / queued / "a.md").exists()  # its job will move it
    assert (ws / STAGING / "young" / "a.md").exists()  # maybe an upload another process is still writing


@pytest.mark.slow
@ON_BOTH_STORES
def test_jobs_cut_short_by_a_stop_run_again_at_start(tmp_path: Path) -> None:
    """A server stopped mid-job left it `running` with its files staged: the next start ingests them."""
    import time

    from ragapp import App
    from ragapp.service.jobs import Jobs
    from ragapp.store import IngestJobRow

    ws = tmp_path / "ws"
    store = App(ws).open_store(create=True)
    jobs = Jobs(store, Collections(ws))
    staged = jobs.staging("default", "j1")
    staged.mkdir(parents=True)
    (staged / "a.md").write_text("# A\n\nThe alpha valve is red.\n", encoding="utf-8")
    with store.session() as s:
        s.add(IngestJobRow(id="j1", collection="default", status="running", files=["a.md"]))
        s.commit()
    jobs.start()
    try:
        deadline = time.monotonic() + 120
        while jobs.get("j1")["status"] not in ("completed", "failed") and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        jobs.stop()
    job = jobs.get("j1")
    assert job["status"] == "completed", job
    assert [d["name"] for d in job["report"]["documents"]] == ["a.md"]
    assert not staged.exists() and (ws / "uploads" / "a.md").is_file()
    assert "alpha valve" in App(ws).search("alpha valve", k=1)[0].text
