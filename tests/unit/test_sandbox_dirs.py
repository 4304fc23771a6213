"""The sandbox directory pool and trash (libnet.sandbox_dirs) never follow a symlink and never
delete what libnet did not make: a ``.pool`` or ``.trash`` that is a symlink or a file, a
symlink in a sandbox directory's place, foreign files and directories planted in any of them."""

from __future__ import annotations

import logging
import os

import pytest

from libnet.sandbox_dirs import POOL, TRASH, DirPool

NAMES = ("resolv.conf", "hosts", ".resolv.conf.spare", ".hosts.spare")


def _victim(tmp_path) -> str:
    """A directory outside the state dir with a file and a libnet-looking subdirectory."""
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "passwd").write_text("x\n")
    (victim / "sub" / "hosts").write_text("keep\n")
    (victim / "dabc.1").mkdir()  # named like a pool directory, with a file libnet makes
    (victim / "dabc.1" / "resolv.conf").write_text("keep\n")
    return str(victim)


def _tree(path: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, dirs, files in os.walk(path) for f in dirs + files)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, text: str = "") -> None:
    with open(path, "w") as f:
        f.write(text)


def _pool(root: str) -> DirPool:
    return DirPool(root, NAMES, (".resolv.conf.tmp", ".hosts.tmp"), low=2, batch=4)


def _sandbox_dir(root: str, name: str) -> str:
    path = os.path.join(root, name)
    os.makedirs(path)
    for f in NAMES:
        with open(os.path.join(path, f), "w") as fh:
            fh.write("x")
    return path


@pytest.mark.parametrize("which", [POOL, TRASH])
def test_a_symlinked_pool_or_trash_is_never_followed(tmp_path, caplog, which: str) -> None:
    victim = _victim(tmp_path)
    before = _tree(victim)
    root = str(tmp_path / "sandboxes")
    os.makedirs(root)
    os.symlink(victim, os.path.join(root, which))
    pool = _pool(root)
    sb = _sandbox_dir(root, "a" * 64)
    with caplog.at_level(logging.WARNING, "libnet.sandbox_dirs"):
        pool.take()  # starts the thread: clears the pool's leftovers and the trash, fills the pool
        assert pool.discard(sb)
        for _ in range(5):
            pool.take()
        pool.close()
    assert _tree(victim) == before  # nothing deleted, nothing made there
    assert os.path.islink(os.path.join(root, which))
    assert not os.path.lexists(sb)  # the sandbox's directory went all the same (deleted in place)
    assert not [r for r in caplog.records if r.exc_info], "no tracebacks"


def test_a_pool_that_is_a_file_turns_the_pool_off_with_one_warning(tmp_path, caplog) -> None:
    root = str(tmp_path / "sandboxes")
    os.makedirs(root)
    with open(os.path.join(root, POOL), "w") as f:
        f.write("mine\n")
    pool = _pool(root)
    with caplog.at_level(logging.WARNING, "libnet.sandbox_dirs"):
        assert pool.take() is None
        pool._exec.submit(lambda: None).result()  # type: ignore[union-attr]  # the start has run
        for _ in range(20):  # every sandbox made: no refill tried again, no traceback each time
            assert pool.take() is None
        pool.close()
    with open(os.path.join(root, POOL)) as f:
        assert f.read() == "mine\n"
    records = [r for r in caplog.records if r.name == "libnet.sandbox_dirs"]
    assert len(records) == 1 and not records[0].exc_info, [r.getMessage() for r in records]


def test_foreign_entries_in_pool_and_trash_stay_and_block_nothing(tmp_path) -> None:
    root = str(tmp_path / "sandboxes")
    for d in (POOL, TRASH):
        os.makedirs(os.path.join(root, d))
        with open(os.path.join(root, d, "notes.txt"), "w") as f:  # a file planted at the top
            f.write("keep\n")
        os.symlink(_victim(tmp_path / d), os.path.join(root, d, "link"))
    # a trashed sandbox directory holding a directory named like a libnet file
    odd = os.path.join(root, TRASH, "b" * 64 + ".1.1")
    os.makedirs(os.path.join(odd, "hosts"))
    _write(os.path.join(odd, "hosts", "x"))
    pool = _pool(root)
    sbs = [_sandbox_dir(root, c * 64) for c in "cde"]
    pool.take()
    for sb in sbs:
        assert pool.discard(sb)
    pool._exec.submit(lambda: None).result()  # type: ignore[union-attr]
    pool.close()
    for d in (POOL, TRASH):
        assert _read(os.path.join(root, d, "notes.txt")) == "keep\n"
        assert os.path.islink(os.path.join(root, d, "link"))
        assert "passwd" in os.listdir(os.path.join(root, d, "link"))
    assert os.path.isdir(os.path.join(odd, "hosts"))
    assert sorted(os.listdir(os.path.join(root, TRASH))) == sorted(["notes.txt", "link", os.path.basename(odd)])


def test_a_symlink_in_a_sandbox_directorys_place_is_neither_followed_nor_removed(tmp_path) -> None:
    victim = _victim(tmp_path)
    (tmp_path / "victim" / "resolv.conf").write_text("keep\n")
    before = _tree(victim)
    root = str(tmp_path / "sandboxes")
    os.makedirs(root)
    link = os.path.join(root, "f" * 64)
    os.symlink(victim, link)
    pool = _pool(root)
    pool.take()
    pool.discard(link)
    pool.close()
    assert _tree(victim) == before
    assert os.path.islink(link)


def test_symlinks_inside_a_sandbox_directory_are_removed_not_followed(tmp_path) -> None:
    victim = _victim(tmp_path)
    root = str(tmp_path / "sandboxes")
    sb = os.path.join(root, "a" * 64)
    os.makedirs(sb)
    os.symlink(os.path.join(victim, "passwd"), os.path.join(sb, "resolv.conf"))
    os.symlink(os.path.join(victim, "sub"), os.path.join(sb, "hosts"))
    pool = _pool(root)
    pool.take()
    assert pool.discard(sb)
    pool._exec.submit(lambda: None).result()  # type: ignore[union-attr]
    pool.close()
    assert not os.path.lexists(sb)
    assert os.listdir(os.path.join(root, TRASH)) == []
    assert _read(os.path.join(victim, "passwd")) == "x\n"
    assert os.listdir(os.path.join(victim, "sub")) == ["hosts"]


def test_a_start_deletes_what_a_killed_run_left_without_waiting_for_a_sandbox(tmp_path) -> None:
    """A kill -9 leaves half-made pool directories and a full trash; the next run deletes
    them at its start, not only at its first sandbox made or removed (maybe never)."""
    root = str(tmp_path / "sandboxes")
    first = _pool(root)
    first.take()
    first.discard(_sandbox_dir(root, "a" * 64))
    first.close()
    for name in ("left.1", "left.2"):  # as a kill in the middle of a fill or a purge leaves them
        _sandbox_dir(os.path.join(root, TRASH), name)
    os.makedirs(os.path.join(root, POOL, "dhalf.1"))
    assert os.listdir(os.path.join(root, POOL)) and os.listdir(os.path.join(root, TRASH))
    pool = _pool(root)
    pool.tidy()
    pool.close()  # waits for the queued work
    assert os.listdir(os.path.join(root, POOL)) == []
    assert os.listdir(os.path.join(root, TRASH)) == []


def test_tidy_of_a_clean_state_dir_starts_no_thread(tmp_path) -> None:
    pool = _pool(str(tmp_path / "sandboxes"))
    pool.tidy()
    assert pool._exec is None
    pool.close()


async def test_the_controller_tidies_at_start(tmp_path) -> None:
    from ipam.ipam import StoreIpam
    from libnet import Config, Controller
    from libnet.store.memory import MemoryStore
    from libnet.testing.fakes import FakeDriver, FakeNamespaces

    state = tmp_path / "state"
    _sandbox_dir(str(state / "sandboxes" / TRASH), "left.1")
    store = MemoryStore()
    ctl = Controller(
        Config(state_dir=str(state), resolv_conf=str(tmp_path / "resolv.conf")),
        store=store,
        ipam=StoreIpam(store),
        drivers={"bridge": FakeDriver("bridge")},
        namespaces=FakeNamespaces(),
    )
    await ctl.start()
    await ctl.close()  # waits for the pool's queued work
    assert os.listdir(state / "sandboxes" / TRASH) == []


def test_a_directory_trashed_while_a_purge_runs_is_deleted_by_that_purge(tmp_path, monkeypatch) -> None:
    """A discard whose purge finds another running (past its look at the trash) leaves the
    work to it: that purge goes round again (CI once saw the directory stay in the trash)."""
    import threading

    root = str(tmp_path / "sandboxes")
    sb = _sandbox_dir(root, "a" * 64)
    pool = _pool(root)
    reached, go = threading.Event(), threading.Event()
    real_open_own = DirPool._open_own

    def slow_open_own(self: DirPool, path: str, make: bool = False) -> int | None:
        fd = real_open_own(self, path, make)
        if path.endswith(TRASH) and not go.is_set():  # the first look at the trash: hold it there
            reached.set()
            assert go.wait(10)
        return fd

    monkeypatch.setattr(DirPool, "_open_own", slow_open_own)
    pool.take()  # the start's purge runs on the pool's thread, and stops after its look
    assert reached.wait(10)
    assert pool.discard(sb)
    go.set()
    pool._exec.submit(lambda: None).result()  # type: ignore[union-attr]
    pool.close()
    assert not os.path.lexists(sb)
    assert os.listdir(os.path.join(root, TRASH)) == []
