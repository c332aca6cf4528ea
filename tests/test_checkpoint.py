"""Checkpoints that cannot hurt: every damaged, foreign or future file is refused with a
clear error and leaves the optimizer exactly as it was; a kill during save leaves the
previous checkpoint loadable; nothing is ever unpickled."""
import glob
import json
import os
import random
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

import fastadam as fa
from fastadam import checkpoint
from fastadam.optimizer import read_checkpoint
from test_errors import assert_frozen, frozen, trained

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [os.path.dirname(os.path.dirname(os.path.abspath(fa.__file__)))]
    + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))


def saved(tmp_path, name="c.npz"):
    params, opt = trained()
    path = tmp_path / name
    opt.save(path)
    return params, opt, path


def entries(path):
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def write_entries(path, ents, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in ents.items():
            zf.writestr(name, data)


def npy_bytes(arr):
    import io
    f = io.BytesIO()
    np.lib.format.write_array(f, arr, allow_pickle=False)
    return f.getvalue()


def rewrite(path, edit_meta=None, edit_arrays=None, rehash=False):
    """Re-zip a checkpoint (valid zip CRCs) after editing its metadata or arrays; with
    ``rehash`` the checksum is recomputed, as a deliberate forger would."""
    ents = entries(path)
    meta_bytes = np.lib.format.read_array(
        __import__("io").BytesIO(ents["__meta__.npy"])).tobytes()
    meta = json.loads(meta_bytes)
    arrays = {n: np.lib.format.read_array(__import__("io").BytesIO(ents[n + ".npy"]))
              for n, _, _ in meta["arrays"]}
    if edit_meta:
        edit_meta(meta)
    if edit_arrays:
        edit_arrays(arrays)
    meta_bytes = json.dumps(meta).encode()
    ents["__meta__.npy"] = npy_bytes(np.frombuffer(meta_bytes, np.uint8))
    for n, a in arrays.items():
        ents[n + ".npy"] = npy_bytes(a)
    if rehash:
        h = checkpoint._new_hash(meta_bytes)
        for n, _, _ in meta["arrays"]:
            a = arrays[n]
            checkpoint._hash_header(h, n, a.dtype, a.shape)
            h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
        ents["__checksum__.npy"] = npy_bytes(np.frombuffer(h.hexdigest().encode(), np.uint8))
    write_entries(path, ents)


def refused(params, opt, path, exc=ValueError, match="checkpoint"):
    before = frozen(params, opt)
    groups = [dict(g) for g in opt.param_groups]
    with pytest.raises(exc, match=match):
        opt.load(path)
    assert_frozen(before, params, opt)
    assert [dict(g) for g in opt.param_groups] == groups


# ------------------------------------------------------------------------- the format
def test_round_trip_is_exact_and_readable_without_pickle(tmp_path):
    params, opt, path = saved(tmp_path)
    sd = opt.state_dict()
    back = read_checkpoint(path)
    assert back["algorithm"] == "adam" and back["param_groups"] == sd["param_groups"]
    assert isinstance(back["param_groups"][0]["betas"], tuple)
    for i, st in sd["state"].items():
        assert set(back["state"][i]) == set(st)
        for k, v in st.items():
            if isinstance(v, np.ndarray):
                assert back["state"][i][k].dtype == v.dtype and np.array_equal(back["state"][i][k], v)
            else:
                assert back["state"][i][k] == v
    with np.load(path, allow_pickle=False) as z:
        for name in z.files:
            assert z[name].dtype != object
        meta = json.loads(z["__meta__"].tobytes())
    assert meta["format"] == checkpoint.FORMAT and meta["algorithm"] == "adam"
    assert meta["checksum"] == "sha256"


class FakeOptimizer:
    """Stands for future algorithms: any ndarray keys per parameter, extra top-level
    entries, empty and 0-d arrays, int and str keys."""
    algorithm = "future"

    def __init__(self, sd):
        self.sd = sd

    def state_dict(self):
        return self.sd


def test_every_array_and_value_of_the_state_dict_is_stored_whatever_its_key(tmp_path):
    sd = {"algorithm": "future",
          "state": {0: {"step": 3, "exp_inf": np.arange(6.0).reshape(2, 3),
                        "param_avg": np.ones(2, np.float32), "empty": np.zeros((0, 4)),
                        "scalar": np.array(2.5), "flags": np.array([True, False])},
                    1: {"step": 0}},
          "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "average": None,
                            "nonfinite": "skip", "max_grad_norm": float("inf"),
                            "params": [0, 1]}],
          "extra": {"skipped_steps": 2, "nested": [1, (2, "x")]}}
    path = tmp_path / "f.npz"
    checkpoint.save(FakeOptimizer(sd), path)
    back = read_checkpoint(path)
    assert back.keys() == sd.keys()
    assert back["param_groups"] == sd["param_groups"] and back["extra"] == sd["extra"]
    for i in (0, 1):
        assert back["state"][i].keys() == sd["state"][i].keys()
        for k, v in sd["state"][i].items():
            got = back["state"][i][k]
            if isinstance(v, np.ndarray):
                assert got.dtype == v.dtype and got.shape == v.shape and np.array_equal(got, v)
            else:
                assert got == v


@pytest.mark.parametrize("bad", [np.array([object()], dtype=object), {1.5: 0}, {"x": {1, 2}}])
def test_save_refuses_what_cannot_be_stored_without_pickle(tmp_path, bad):
    sd = {"algorithm": "future", "state": {0: {"step": 1, "bad": bad}}, "param_groups": []}
    with pytest.raises(TypeError, match=r"state_dict\['state'\]\[0\]"):
        checkpoint.save(FakeOptimizer(sd), tmp_path / "x.npz")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------- damage
def test_truncation_at_any_length_is_refused(tmp_path):
    params, opt, path = saved(tmp_path)
    data = path.read_bytes()
    cuts = sorted(set(range(0, len(data), max(1, len(data) // 97))) | {len(data) - 1, 1})
    for cut in cuts:
        path.write_bytes(data[:cut])
        refused(params, opt, path)


def test_no_single_byte_change_anywhere_in_the_file_loads_different_state(tmp_path):
    """Change every third byte of a small checkpoint in turn: each read either fails with a
    ValueError or (for bytes no reader uses, such as zip timestamps) yields exactly the
    saved state_dict. Never silently different state."""
    opt = fa.Adam([np.zeros(2, np.float32)])     # small file: one load per byte
    opt.step([np.array([1.0, -2.0], np.float32)])
    path = tmp_path / "small.npz"
    opt.save(path)
    data = path.read_bytes()
    want = opt.state_dict()
    detected = 0
    positions = range(0, len(data), 3)       # every third byte keeps this under seconds
    for pos in positions:
        bad = bytearray(data)
        bad[pos] ^= 0x5A
        path.write_bytes(bytes(bad))
        try:
            got = read_checkpoint(path)
        except ValueError:
            detected += 1
            continue
        assert got["param_groups"] == want["param_groups"], pos
        for i, st in want["state"].items():
            assert got["state"][i].keys() == st.keys(), pos
            for k, v in st.items():
                assert np.array_equal(got["state"][i][k], v), f"byte {pos} changed {i}/{k}"
    assert detected > 0.75 * len(positions)   # the rest: zip fields no reader uses (times, flags)


def test_checksum_catches_changed_array_in_an_otherwise_valid_archive(tmp_path):
    """The zip CRC is rewritten correctly here; only the checksum can notice."""
    params, opt, path = saved(tmp_path)

    def flip(arrays):
        a = arrays["state/1/exp_avg_sq"]
        a.view(np.uint8)[5] ^= 0x01
    rewrite(path, edit_arrays=flip)
    refused(params, opt, path, match="checksum mismatch")


def test_checksum_catches_changed_metadata(tmp_path):
    params, opt, path = saved(tmp_path)

    def set_step(meta):
        # state -> {0: {"step": ...}}: change the step of parameter 0
        state = dict(meta["state_dict"]["__dict__"])["state"]
        p0 = dict(state["__dict__"])[0]
        for item in p0["__dict__"]:
            if item[0] == "step":
                item[1] = 7
    rewrite(path, edit_meta=set_step)
    refused(params, opt, path, match="checksum mismatch")


def test_future_format_is_refused_with_an_upgrade_hint(tmp_path):
    params, opt, path = saved(tmp_path)
    rewrite(path, edit_meta=lambda m: m.update(format=checkpoint.FORMAT + 1), rehash=True)
    refused(params, opt, path, match=f"format {checkpoint.FORMAT + 1}.*upgrade fastadam")


@pytest.mark.parametrize("fmt", [1, "2", None])
def test_old_or_malformed_format_numbers_are_refused(tmp_path, fmt):
    params, opt, path = saved(tmp_path)
    rewrite(path, edit_meta=lambda m: m.update(format=fmt), rehash=True)
    refused(params, opt, path, match="format")


def test_wrong_algorithm_is_refused_by_name(tmp_path):
    params, opt = trained()
    other = fa.AdamW([p.copy() for p in params], amsgrad=True)
    path = tmp_path / "w.npz"
    other.save(path)
    refused(params, opt, path, match="'adamw' optimizer's state; this optimizer is 'adam'")


def test_wrong_shape_is_refused(tmp_path):
    _, opt, path = saved(tmp_path)
    params = [np.zeros((2, 3), np.float32), np.zeros(4, np.float32)]
    other = fa.Adam(params, amsgrad=True)
    other.step([np.ones((2, 3), np.float32), np.ones(4, np.float32)])
    refused(params, other, path, match=r"does not fit this optimizer.*must have shape \(2, 3\)")


def test_wrong_dtype_is_refused(tmp_path):
    _, opt, path = saved(tmp_path)
    params = [np.zeros((3, 2)), np.zeros(4)]      # float64 where the file has float32
    other = fa.Adam(params, amsgrad=True)
    other.step([np.ones((3, 2)), np.ones(4)])
    refused(params, other, path, exc=TypeError, match="does not fit.*must have dtype float64")


def test_forged_checkpoint_with_valid_checksum_is_still_validated_by_load_state_dict(tmp_path):
    params, opt, path = saved(tmp_path)

    def bad_lr(meta):
        groups = dict(meta["state_dict"]["__dict__"])["param_groups"]
        for item in groups[0]["__dict__"]:
            if item[0] == "lr":
                item[1] = -1.0
    rewrite(path, edit_meta=bad_lr, rehash=True)
    refused(params, opt, path, match="Invalid learning rate")


def test_compressed_duplicate_missing_and_extra_entries_are_refused(tmp_path):
    params, opt, path = saved(tmp_path)
    ents = entries(path)
    write_entries(path, ents, compression=zipfile.ZIP_DEFLATED)
    refused(params, opt, path, match="compressed")
    write_entries(path, dict(ents, **{"extra.npy": npy_bytes(np.zeros(2))}))
    refused(params, opt, path, match="unexpected")
    write_entries(path, {k: v for k, v in ents.items() if k != "__checksum__.npy"})
    refused(params, opt, path, match="missing")
    with zipfile.ZipFile(path, "w") as zf:
        for k, v in ents.items():
            zf.writestr(k, v)
        with pytest.warns(UserWarning):
            zf.writestr("__meta__.npy", ents["__meta__.npy"])
    refused(params, opt, path, match="duplicate")


def test_header_claiming_a_huge_array_is_refused_before_allocating(tmp_path):
    params, opt, path = saved(tmp_path)
    ents = entries(path)
    # A well-formed header for a 4 TB array, followed by the original small data:
    raw = bytearray(ents["state/0/exp_avg.npy"])
    header_len = int.from_bytes(raw[8:10], "little")
    text = raw[10:10 + header_len].decode("latin1")
    text = text.replace("(3, 2)", "(1000000000000,)").ljust(header_len)[:header_len]
    raw[10:10 + header_len] = text.encode("latin1")
    ents["state/0/exp_avg.npy"] = bytes(raw)
    write_entries(path, ents)
    refused(params, opt, path, match="expected float32 \\(3, 2\\)")


class _Trap:
    """Unpickling this would create a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_payload_is_never_unpickled(tmp_path):
    params, opt, path = saved(tmp_path)
    marker = tmp_path / "pwned"
    payload = np.array([_Trap(str(marker))], dtype=object)
    import io
    f = io.BytesIO()
    np.lib.format.write_array(f, payload, allow_pickle=True)
    ents = entries(path)
    ents["state/0/exp_avg.npy"] = f.getvalue()
    write_entries(path, ents)
    refused(params, opt, path)

    def to_object(meta):
        for item in meta["arrays"]:
            if item[0] == "state/0/exp_avg":
                item[1], item[2] = "|O", [1]
    ents2 = entries(path)
    meta = json.loads(np.lib.format.read_array(io.BytesIO(ents2["__meta__.npy"])).tobytes())
    to_object(meta)
    ents2["__meta__.npy"] = npy_bytes(np.frombuffer(json.dumps(meta).encode(), np.uint8))
    write_entries(path, ents2)
    refused(params, opt, path, match="unsupported dtype object")
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"PK\x05\x06" + bytes(18), b"\x00" * 1000])
def test_garbage_files_are_refused(tmp_path, content):
    params, opt = trained()
    path = tmp_path / "g.npz"
    path.write_bytes(content)
    refused(params, opt, path)


def test_directory_and_missing_paths_are_clear_errors(tmp_path):
    params, opt = trained()
    refused(params, opt, tmp_path, match="cannot read checkpoint")
    refused(params, opt, tmp_path / "missing.npz", match="cannot read checkpoint")


# ------------------------------------------------------------------------- atomicity
def test_save_fsyncs_the_file_and_its_folder(tmp_path, monkeypatch):
    _, opt = trained()
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd")
                      else fd)
        real(fd)
    monkeypatch.setattr(os, "fsync", spy)
    opt.save(tmp_path / "s.npz")
    assert len(synced) == 2
    if os.path.exists("/proc/self/fd"):
        assert synced[0].endswith(".tmp") and synced[1] == os.path.realpath(tmp_path)


MIDWRITE_CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    import fastadam as fa

    path = sys.argv[1]
    p = [np.zeros(100_000)]
    opt = fa.Adam(p)

    def set_state(k):
        sd = opt.state_dict()
        st = sd["state"][0]
        st["step"] = k
        st["exp_avg"][:] = k
        st["exp_avg_sq"][:] = k
        opt.load_state_dict(sd)

    set_state(1)
    opt.save(path)
    print("saved 1", flush=True)
    set_state(2)
    real = np.lib.format.write_array
    calls = []

    def stall(fp, arr, **kw):
        calls.append(1)
        if len(calls) == 3:            # metadata and exp_avg written; stall in exp_avg_sq
            real(fp, arr[: arr.size // 2], **kw)
            print("mid-write", flush=True)
            time.sleep(600)
        real(fp, arr, **kw)
    np.lib.format.write_array = stall
    opt.save(path)
""")


def test_kill_during_save_leaves_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "c.npz"
    child = subprocess.Popen([sys.executable, "-c", MIDWRITE_CHILD, str(path)],
                             stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert child.stdout.readline().strip() == "saved 1"
        assert child.stdout.readline().strip() == "mid-write"
        temps = glob.glob(str(tmp_path / ".c.npz.*.tmp"))
        assert len(temps) == 1, "the new checkpoint must be written to a temporary file"
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    opt = fa.Adam([np.zeros(100_000)])
    opt.load(path)
    st = opt.state[0]
    assert st["step"] == 1 and np.all(st["exp_avg"] == 1) and np.all(st["exp_avg_sq"] == 1)
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        read_checkpoint(temps[0])      # the torn temporary file is detectably incomplete


LOOP_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import fastadam as fa

    path = sys.argv[1]
    opt = fa.Adam([np.zeros(1_000_000), np.zeros(7)])
    k = 0
    while True:
        k += 1
        sd = opt.state_dict()
        for st in sd["state"].values():
            st["step"] = k
            st["exp_avg"][:] = k
            st["exp_avg_sq"][:] = -k
        opt.load_state_dict(sd)
        opt.save(path)
        print(k, flush=True)
""")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_a_random_moment_of_repeated_saves_never_tears_the_checkpoint(tmp_path, seed):
    path = tmp_path / "c.npz"
    child = subprocess.Popen([sys.executable, "-c", LOOP_CHILD, str(path)],
                             stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        last = int(child.stdout.readline())
        # Kill after a random number of further completed saves plus a random delay,
        # so the kill lands anywhere in a save (ordering, not timing, is asserted).
        rng = random.Random(seed)
        for _ in range(rng.randrange(3)):
            last = int(child.stdout.readline())
        import time
        time.sleep(rng.uniform(0, 0.05))
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    opt = fa.Adam([np.zeros(1_000_000), np.zeros(7)])
    opt.load(path)
    k = opt.state[0]["step"]
    assert k >= last
    for i in (0, 1):
        st = opt.state[i]
        assert st["step"] == k and np.all(st["exp_avg"] == k) and np.all(st["exp_avg_sq"] == -k)
