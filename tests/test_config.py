"""Config precedence (defaults < ragapp.toml < environment < flags) and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragapp.config import load_config
from ragapp.errors import ConfigError


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
