import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every data test writes its cache files to a private folder, never to ~/.cache."""
    monkeypatch.setenv("NUMFORMER_CACHE", str(tmp_path_factory.getbasetemp() / "numformer-cache"))


@pytest.fixture(scope="session")
def shakespeare_text(tmp_path_factory):
    """The converted built-in corpus, computed once per session (about half a second)."""
    from numformer.data import corpus

    return corpus.shakespeare(cache=False)
