"""llm_doe.storage: masking passwords, refusing missing stores, one error for unopenable ones."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from llm_doe.schema import ConfigError, StorageConfig
from llm_doe.storage import (
    check_storage,
    make_storage,
    mask_overrides,
    mask_url,
    masked_config,
    open_store,
    sqlite_path,
    storage_label,
    store_of,
)

PG = "postgresql://user:secret@db.example/studies"


def test_passwords_are_masked_everywhere_they_could_be_written():
    assert "secret" not in mask_url(PG) and "***" in mask_url(PG)
    assert mask_url("not a url") == "not a url"
    assert mask_overrides([f"storage.url={PG}", "train.seed=1"]) == [f"storage.url={mask_url(PG)}", "train.seed=1"]
    config = OmegaConf.create({"storage": {"url": PG}, "study": {"name": "x"}})
    assert masked_config(config) == {"storage": {"url": mask_url(PG)}, "study": {"name": "x"}}
    assert storage_label(StorageConfig(url=PG)) == mask_url(PG)
    assert storage_label(StorageConfig(kind="journal", journal_path="s.journal")) == "journal:s.journal"


def test_store_of_refuses_a_store_that_does_not_exist(tmp_path):
    with pytest.raises(ConfigError, match="no study store") as err:
        store_of(StorageConfig(url=f"sqlite:///{tmp_path}/none.db"))
    assert err.value.key == "storage.url"
    with pytest.raises(ConfigError, match="no study store") as err:
        store_of(StorageConfig(kind="journal", journal_path=str(tmp_path / "none.journal")))
    assert err.value.key == "storage.journal_path"


def test_a_created_store_is_found(tmp_path):
    cfg = StorageConfig(url=f"sqlite:///{tmp_path}/s.db", heartbeat_interval=None)
    check_storage(cfg)
    assert not (tmp_path / "s.db").exists()  # checking creates nothing
    make_storage(cfg)
    assert sqlite_path(cfg.url) == tmp_path / "s.db"
    assert store_of(cfg) == cfg.url
    storage, names = open_store(cfg, lambda s: [])
    assert names == [] and storage is not None


def test_a_file_that_is_no_store_is_one_config_error(tmp_path):
    (tmp_path / "foreign.db").write_text("not a database")
    cfg = StorageConfig(url=f"sqlite:///{tmp_path}/foreign.db", heartbeat_interval=None)
    with pytest.raises(ConfigError, match="cannot open the study store") as err:
        open_store(cfg, lambda s: s.get_all_studies())
    assert err.value.key == "storage.url" and "\n" not in str(err.value)
