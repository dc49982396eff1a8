"""Config precedence (defaults < ragapp.toml < environment < flags) and errors that name the key."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ragapp.app import App
from ragapp.config import load_config, toml_text
from ragapp.errors import ConfigError
from ragapp.service.collections import Collections, pg_schema
from ragapp.service.service import Service
from tests.support import ROOT


def write_toml(folder: Path, text: str) -> None:
    (folder / "ragapp.toml").write_text(text, encoding="utf-8")


def test_defaults_without_file_or_env(tmp_path: Path) -> None:
    eff = load_config(tmp_path, environ={})
    assert eff.config.retrieval.k == 4
    assert eff.config.generation.temperature == 0.0
    assert eff.describe()["retrieval"]["k"] == {"value": 4, "from": "default"}


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    write_toml(tmp_path, "[retrieval]\nk = 6\n[generation]\ntemperature = 0.5\nmax_new_tokens = 99\n")
    env = {"RAGAPP_GENERATION_TEMPERATURE": "0.7", "RAGAPP_INGEST_EXCLUDE": '["*.log", "tmp/**"]'}
    eff = load_config(tmp_path, {"generation": {"temperature": 0.9, "seed": None}}, environ=env)
    c = eff.config
    assert c.retrieval.k == 6  # file
    assert c.generation.max_new_tokens == 99  # file
    assert c.generation.temperature == 0.9  # flag beats env beats file
    assert c.generation.seed == 0  # an unset flag (None) does not override
    assert c.ingest.exclude == ["*.log", "tmp/**"]  # env value parsed as TOML
    origin = eff.describe()
    assert origin["retrieval"]["k"]["from"].endswith("ragapp.toml")
    assert origin["ingest"]["exclude"]["from"] == "RAGAPP_INGEST_EXCLUDE"
    assert origin["generation"]["temperature"]["from"] == "flag"


def test_env_string_values_need_no_quotes(tmp_path: Path) -> None:
    eff = load_config(tmp_path, environ={"RAGAPP_GENERATION_DEVICE": "cpu", "RAGAPP_EMBEDDING_MODEL": "/x/y"})
    assert eff.config.generation.device == "cpu"
    assert eff.config.embedding.model == "/x/y"


@pytest.mark.parametrize(
    ("toml", "env", "expected"),
    [
        ("[generation]\ntemperature = -1\n", {}, "generation.temperature: Input should be greater than or equal to 0"),
        ("", {"RAGAPP_GENERATION_TEMPERATURE": "-1"}, "(from RAGAPP_GENERATION_TEMPERATURE)"),
        ("[retrieval]\nkk = 3\n", {}, "retrieval.kk: unknown setting"),
        ("[index]\nkind = 'ivf'\n", {}, "index.kind:"),
        (
            "[chunking]\nchunk_tokens = 50\noverlap_tokens = 50\n",
            {},
            "overlap_tokens must be smaller than chunk_tokens",
        ),
        ("[prompt]\ntemplate = 'no fields'\n", {}, "template must contain {context}"),
        ("retrieval = 3\n", {}, "retrieval: expected a [retrieval] table"),
        ("", {"RAGAPP_BOGUS_X": "1"}, "RAGAPP_BOGUS_X: unknown setting"),
        (
            "[generation]\nbackend = 'llamacpp'\n",
            {},
            "generation.backend: Input should be 'transformers', 'vllm' or 'openai'",
        ),
        (
            "",
            {"RAGAPP_GENERATION_DTYPE": "int4"},
            "generation.dtype: Input should be 'float32', 'bfloat16' or 'float16'",
        ),
        ("[generation]\ntimeout = 0\n", {}, "generation.timeout: Input should be greater than 0"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, toml: str, env: dict[str, str], expected: str) -> None:
    write_toml(tmp_path, toml)
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path, environ=env)
    assert expected in str(err.value)


def test_bad_value_names_the_file_it_came_from(tmp_path: Path) -> None:
    write_toml(tmp_path, "[retrieval]\nk = 0\n")
    with pytest.raises(ConfigError, match=r"retrieval\.k: .*\(from .*ragapp\.toml\)"):
        load_config(tmp_path, environ={})


def test_invalid_toml_is_reported_with_its_path(tmp_path: Path) -> None:
    write_toml(tmp_path, "[retrieval\nk = ")
    with pytest.raises(ConfigError, match="ragapp.toml: not valid TOML"):
        load_config(tmp_path, environ={})


def test_few_shot_examples_parse(tmp_path: Path) -> None:
    write_toml(
        tmp_path,
        '[[prompt.examples]]\nquestion = "q1"\ncontext = "[1] c1"\nanswer = "a1 [1]"\n'
        '[[prompt.examples]]\nquestion = "q2"\ncontext = "[1] c2"\nanswer = "a2 [1]"\n',
    )
    examples = load_config(tmp_path, environ={}).config.prompt.examples
    assert [e.question for e in examples] == ["q1", "q2"]


def test_toml_text_reads_back_as_the_same_settings() -> None:
    layer = {
        "database": {"url": "postgresql://u@h/db", "pg_schema": "collection_0123"},
        "generation": {"stop": ["\nQuestion:", 'say "hi"'], "temperature": 0.5, "seed": 3},
        "prompt": {"examples": [{"question": "q", "context": "[1] é", "answer": "a [1]"}]},
        "retrieval": {"mmr": True},
    }
    assert tomllib.loads(toml_text(layer)) == layer
    with pytest.raises(ConfigError, match="cannot write"):
        toml_text({"generation": {"temperature": float("nan")}})


def test_server_collections_get_the_server_settings_as_config_objects(
    tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ragapp serve`'s flags (given to its Service) reach every collection's App, and on PostgreSQL its
    schema too, with no environment variable set and no TOML text edited; the folder's ragapp.toml lets the
    CLI open the collection."""
    monkeypatch.delenv("RAGAPP_DATABASE_URL", raising=False)  # the PostgreSQL run's URL goes as a flag here
    root = tmp_path / "ws"
    root.mkdir()
    write_toml(root, '# the server\'s settings\n[retrieval]\nk = 3\n[database]\npg_schema = ""\n')
    flags = {"generation": {"max_new_tokens": 7}} | ({"database": {"url": database}} if database != "sqlite" else {})
    service = Service(root, config=flags)
    server, collections = service.root, service.collections
    collections.create("team-a")
    app = collections.app("team-a")
    assert "RAGAPP_DATABASE_URL" not in os.environ
    assert app.config.generation.max_new_tokens == 7 and app.settings.origin["generation.max_new_tokens"] == "flag"
    assert app.config.retrieval.k == 3  # the server's ragapp.toml, through the collection's copy
    assert app.config.database.url == server.config.database.url
    on_disk = (root / "collections" / "team-a" / "ragapp.toml").read_text(encoding="utf-8")
    if database == "sqlite":
        assert on_disk == (root / "ragapp.toml").read_text(encoding="utf-8")  # a verbatim copy
        assert app.config.database.pg_schema == ""
    else:
        assert app.config.database.pg_schema == pg_schema("team-a")
        assert tomllib.loads(on_disk) == {"retrieval": {"k": 3}, "database": {"pg_schema": pg_schema("team-a")}}
        # The CLI, given the same URL, opens the collection's tables through the folder's file.
        cli_view = App(root / "collections" / "team-a", config={"database": {"url": database}})
        assert cli_view.config.database.pg_schema == pg_schema("team-a")
        # A replica without the folder makes it; the server's schema wins over a hand-edited file.
        app.close()
        collections.close()
        shutil.rmtree(root / "collections" / "team-a")
        replica = Collections(root, server.open_store(), config=flags)
        assert replica.app("team-a").config.database.pg_schema == pg_schema("team-a")
        replica.close()
        write_toml(root / "collections" / "team-a", '[database]\npg_schema = "public"\n')
        again = Collections(root, server.open_store(), config=flags)
        assert again.app("team-a").config.database.pg_schema == pg_schema("team-a")
        again.close()
    service.close()


def test_the_suites_own_settings_never_reach_ragapps_config(tmp_path: Path) -> None:
    """README documents RAGAPP_TEST_DATA and RAGAPP_TEST_DATABASE_URL; ragapp refuses unknown RAGAPP_*
    settings, so the suite takes them out of the environment before any App or server starts."""
    env = {**os.environ, "RAGAPP_TEST_DATA": str(tmp_path), "RAGAPP_TEST_DATABASE_URL": "postgresql://u@h/db"}
    script = (
        "import os, tests.support as s; from ragapp import App\n"
        "App(os.environ['WS']).settings\n"
        "print(s.TEST_DATA, s.TEST_DATABASE_URL, [k for k in os.environ if k.startswith('RAGAPP_TEST')])"
    )
    env["WS"] = str(tmp_path / "ws")
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(tmp_path), "postgresql://u@h/db", "[]"]
