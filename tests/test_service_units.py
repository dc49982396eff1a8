"""The service's parts without a server: keys, collections, the generation queue, upload names, conversations.

`condense` is exercised with a scripted generator (a fake, for control flow only); the real model's
rewriting is covered end to end in test_service_api.py.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from ragapp.cli import cli
from ragapp.cli.serve import is_loopback
from ragapp.errors import Conflict, NotFound, UsageError
from ragapp.service.api import ApiError, _upload_name
from ragapp.service.collections import Collections
from ragapp.service.conversations import Conversations, Turn, condense, history_from_messages
from ragapp.service.keys import KeyStore
from ragapp.service.limits import GenerationQueue, QueueFull
from ragapp.store import ApiKeyRow, Store

pytestmark = pytest.mark.usefixtures("database")


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
        _upload_name(name)
    assert refused.value.status == 400


def test_upload_types_must_be_supported() -> None:
    assert _upload_name("Notes 2024.md") == "Notes 2024.md"
    for name in ("tool.exe", "archive.tar.gz", "README"):
        with pytest.raises(ApiError) as refused:
            _upload_name(name)
        assert refused.value.status == 415 and "unsupported file type" in str(refused.value)


class ScriptedGenerator:
    """A fake generator (control flow only): returns a scripted reply and records the prompts."""

    def __init__(self, reply: str):
        self.reply = reply
        self.prompts: list[list[dict[str, str]]] = []

    def generate(self, messages: list[dict[str, str]], config: object) -> str:
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


def test_conversations_belong_to_their_key_and_collection(tmp_path: Path) -> None:
    conversations = Conversations(Store(f"sqlite:///{tmp_path / 'db'}"))
    cid = conversations.start("alpha", key_id=1)
    conversations.add(cid, "q1", "q1", "a1", [])
    conversations.add(cid, "q2", "standalone q2", "a2", [{"n": 1}])
    assert conversations.history(cid, "alpha", 1, last=1) == [Turn("q2", "a2")]
    assert conversations.history(cid, "alpha", 1, last=0) == []
    assert [t["standalone_question"] for t in conversations.turns(cid, "alpha", 1)] == ["q1", "standalone q2"]
    for collection, key_id in (("beta", 1), ("alpha", 2), ("alpha", None)):
        with pytest.raises(NotFound):
            conversations.history(cid, collection, key_id, last=4)
    conversations.drop_collection("alpha")
    with pytest.raises(NotFound):
        conversations.turns(cid, "alpha", 1)


def test_loopback_addresses() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.5", "example.com"]))


def test_serve_refuses_other_addresses_without_a_key(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--workspace", str(tmp_path / "ws"), "serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "refusing to listen on 0.0.0.0 with no API key" in result.output


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


@pytest.mark.slow
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
