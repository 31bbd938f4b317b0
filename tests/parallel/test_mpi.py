"""The MPI world without a launcher (numformer.parallel.mpi); runs under mpirun are in
tests/parallel/mpi."""

import pytest


def test_missing_mpi4py_hint_names_the_clone_install(monkeypatch):
    import builtins

    from numformer.errors import UsageError
    from numformer.parallel import mpi

    real_import = builtins.__import__

    def no_mpi4py(name, *a, **kw):
        if name == "mpi4py" or name.startswith("mpi4py."):
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_mpi4py)
    monkeypatch.setenv("PMI_RANK", "0")
    monkeypatch.setenv("PMI_SIZE", "2")
    with pytest.raises(UsageError) as e:
        mpi.init_world()
    assert "pip install '.[mpi]'" in str(e.value) and "numformer[mpi]" not in str(e.value)
