"""Checkpoint files: an optimizer's state_dict in a .npz that cannot hurt.

Layout (format 2). A zip archive of uncompressed ``.npy`` entries, readable with
``np.load(path, allow_pickle=False)``:

* ``__meta__.npy``: uint8, UTF-8 JSON ``{"format", "library", "fastadam_version",
  "algorithm", "checksum": "sha256", "arrays": [[name, dtype, shape], ...],
  "state_dict": tree}``. ``tree`` is the state_dict with every ndarray replaced by
  ``{"__ndarray__": name}``, tuples by ``{"__tuple__": [...]}`` and dicts by
  ``{"__dict__": [[key, value], ...]}`` (keys may be ints, as in ``state``).
* ``<name>.npy`` for every array of the state_dict, whatever its key (``exp_avg``,
  ``exp_inf``, ``param_avg``, ...): the file format knows nothing of the algorithms;
  ``load_state_dict`` decides what is valid.
* ``__checksum__.npy``: uint8, the hex sha256 of the metadata bytes and, for each array
  in the listed order, its name, dtype, shape and bytes.

Guarantees: nothing is unpickled (numeric dtypes only); every entry is checked against
the metadata (dtype, shape, size) before its data is read, so a corrupt header cannot
make us allocate more than the file holds; the checksum catches any changed byte; a
file from a newer fastadam is refused by its format number; any failure is a
ValueError naming the file. ``save`` is atomic: a temporary file in the same folder is
written, fsynced and renamed over the target (and the folder fsynced), so a crash or a
kill at any moment leaves either the old or the new checkpoint, never a torn one. A
killed writer may leave a ``.<name>.*.tmp`` file behind; it is never read.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import struct
import zipfile
import zlib

import numpy as np

FORMAT = 2
_LIBRARY = "fastadam"
_META, _CHECKSUM = "__meta__", "__checksum__"
_ARRAY_KINDS = "biufc"          # bool, ints, floats, complex: never object/void/str
_CHUNK = 1 << 20                # bytes read per call when loading an array
_MAX_META_BYTES = 64 << 20


# ----------------------------------------------------------------------------- encoding
def _encode(obj, path, arrays):
    """JSON-able tree of ``obj``; its arrays go to ``arrays`` (name -> array)."""
    where = "state_dict" + "".join(f"[{p!r}]" for p in path)
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _ARRAY_KINDS or obj.dtype.fields is not None:
            raise TypeError(f"{where} has dtype {obj.dtype}; checkpoints store numeric "
                            "arrays only (no pickle)")
        name = "/".join(str(p) for p in path) or "array"
        while name in arrays or name in (_META, _CHECKSUM):
            name += "~"
        arrays[name] = obj if obj.flags.c_contiguous else obj.copy(order="C")
        return {"__ndarray__": name}
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(x, path + (i,), arrays) for i, x in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(x, path + (i,), arrays) for i, x in enumerate(obj)]
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if isinstance(k, (bool, np.bool_)) or not isinstance(k, (str, int, np.integer)):
                raise TypeError(f"{where} has a key {k!r} of type {type(k).__name__}; "
                                "checkpoint keys must be str or int")
            k = k if isinstance(k, str) else int(k)
            items.append([k, _encode(v, path + (k,), arrays)])
        return {"__dict__": items}
    raise TypeError(f"{where} is a {type(obj).__name__}; checkpoints store numbers, "
                    "strings, None, lists, tuples, dicts and numeric numpy arrays")


def _decode(node, arrays):
    if isinstance(node, list):
        return [_decode(x, arrays) for x in node]
    if isinstance(node, dict):
        if len(node) != 1:
            raise ValueError(f"malformed metadata node with keys {sorted(node)}")
        (tag, body), = node.items()
        if tag == "__ndarray__":
            return arrays[body]            # KeyError -> unknown array name
        if tag == "__tuple__" and isinstance(body, list):
            return tuple(_decode(x, arrays) for x in body)
        if tag == "__dict__" and isinstance(body, list):
            out = {}
            for item in body:
                if not (isinstance(item, list) and len(item) == 2
                        and isinstance(item[0], (str, int)) and not isinstance(item[0], bool)):
                    raise ValueError("malformed dict entry in metadata")
                out[item[0]] = _decode(item[1], arrays)
            return out
        raise ValueError(f"malformed metadata node {tag!r}")
    if node is None or isinstance(node, (str, bool, int, float)):
        return node
    raise ValueError(f"malformed metadata value of type {type(node).__name__}")


def _hash_header(h, name, dtype, shape):
    h.update(f"\0array\0{name}\0{np.dtype(dtype).str}\0{list(shape)}\0".encode())


def _new_hash(meta_bytes):
    h = hashlib.sha256(b"fastadam-checkpoint\0")
    h.update(meta_bytes)
    return h


# ----------------------------------------------------------------------------- writing
def save(optimizer, path):
    """Write ``optimizer.state_dict()`` to ``path`` atomically (see module docstring)."""
    sd = optimizer.state_dict()
    arrays = {}
    tree = _encode(sd, (), arrays)
    names = sorted(arrays)
    from . import __version__
    meta = {"format": FORMAT, "library": _LIBRARY, "fastadam_version": __version__,
            "algorithm": sd.get("algorithm"), "checksum": "sha256",
            "arrays": [[n, arrays[n].dtype.str, list(arrays[n].shape)] for n in names],
            "state_dict": tree}
    meta_bytes = json.dumps(meta, separators=(",", ":")).encode()
    h = _new_hash(meta_bytes)
    for n in names:
        a = arrays[n]
        _hash_header(h, n, a.dtype, a.shape)
        h.update(a.reshape(-1).view(np.uint8))
    digest = np.frombuffer(h.hexdigest().encode(), dtype=np.uint8)
    entries = [(_META, np.frombuffer(meta_bytes, dtype=np.uint8))]
    entries += [(n, arrays[n]) for n in names]
    entries.append((_CHECKSUM, digest))      # last: a torn file never has it
    write_atomic(path, lambda f: _write_zip(f, entries))


def _write_zip(f, entries):
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in entries:
            with zf.open(name + ".npy", "w", force_zip64=True) as out:
                np.lib.format.write_array(out, arr, allow_pickle=False)


def write_atomic(path, write):
    """Call ``write(file)`` on a new temporary file beside ``path``, fsync it, rename it
    over ``path`` and fsync the folder. On any failure the temporary file is removed and
    ``path`` is untouched."""
    path = os.fspath(path)
    folder, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


def _fsync_dir(folder):
    """Make the rename durable (POSIX); a no-op where folders cannot be opened/fsynced."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- reading
_READ_ERRORS = (OSError, EOFError, zipfile.BadZipFile, zlib.error, ValueError, KeyError,
                TypeError, IndexError, struct.error, NotImplementedError, RuntimeError,
                OverflowError, MemoryError)


def read_checkpoint(path):
    """The state_dict stored at ``path`` by :func:`save`, fully verified (format,
    entries, dtypes, shapes, checksum). ValueError, naming the file, if anything is off."""
    path = os.fspath(path)
    try:
        return _read(path)
    except _READ_ERRORS as e:   # RecursionError is a RuntimeError; JSON errors ValueErrors
        raise ValueError(f"cannot read checkpoint {path}: {e}") from None


def _read(path):
    with open(path, "rb") as fh:
        file_size = os.fstat(fh.fileno()).st_size
        with zipfile.ZipFile(fh) as zf:
            infos = zf.infolist()
            entries = {i.filename: i for i in infos}
            if len(entries) != len(infos):
                raise ValueError("duplicate entries in the archive")
            if _META + ".npy" not in entries:
                raise ValueError("not a fastadam checkpoint (no __meta__ entry)")
            for i in infos:
                if i.compress_type != zipfile.ZIP_STORED:
                    raise ValueError(f"entry {i.filename} is compressed; fastadam "
                                     "checkpoints are stored uncompressed")
            if sum(i.file_size for i in infos) > file_size:
                raise ValueError("entry sizes exceed the file size (corrupt directory)")

            meta_info = entries[_META + ".npy"]
            if meta_info.file_size > _MAX_META_BYTES:
                raise ValueError("metadata entry is implausibly large")
            meta_bytes = _read_array(zf, meta_info, np.dtype(np.uint8), None).tobytes()
            meta = json.loads(meta_bytes.decode("utf-8"))
            if not isinstance(meta, dict) or meta.get("library") != _LIBRARY:
                raise ValueError("not a fastadam checkpoint (metadata lacks the library tag)")
            fmt = meta.get("format")
            if isinstance(fmt, bool) or not isinstance(fmt, int):
                raise ValueError(f"format number {fmt!r} is not an integer")
            if fmt > FORMAT:
                raise ValueError(f"written in checkpoint format {fmt} by fastadam "
                                 f"{meta.get('fastadam_version', '?')}; this fastadam reads "
                                 f"format {FORMAT}: upgrade fastadam to load it")
            if fmt != FORMAT:
                raise ValueError(f"checkpoint format {fmt} is not supported (this fastadam "
                                 f"reads format {FORMAT})")
            if meta.get("checksum") != "sha256":
                raise ValueError(f"unknown checksum kind {meta.get('checksum')!r}")
            listed = _array_list(meta.get("arrays"))
            expected = {n + ".npy" for n, _, _ in listed} | {_META + ".npy", _CHECKSUM + ".npy"}
            if set(entries) != expected:
                extra = sorted(set(entries) - expected)
                missing = sorted(expected - set(entries))
                raise ValueError(f"archive entries do not match the metadata (missing "
                                 f"{missing}, unexpected {extra})")
            stored = _read_array(zf, entries[_CHECKSUM + ".npy"], np.dtype(np.uint8),
                                 (64,)).tobytes()
            h = _new_hash(meta_bytes)
            arrays = {}
            for name, dtype, shape in listed:
                _hash_header(h, name, dtype, shape)
                arrays[name] = _read_array(zf, entries[name + ".npy"], dtype, shape, h)
    if h.hexdigest().encode() != stored:
        raise ValueError("checksum mismatch: the file is corrupted (its contents differ "
                         "from what was saved)")
    sd = _decode(meta["state_dict"], arrays)
    if not isinstance(sd, dict):
        raise ValueError("the stored state_dict is not a dict")
    if sd.get("algorithm") != meta.get("algorithm"):
        raise ValueError("metadata algorithm and state_dict algorithm disagree")
    return sd


def _array_list(listed):
    if not isinstance(listed, list):
        raise ValueError("metadata lacks the array list")
    out, seen = [], set()
    for item in listed:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                and isinstance(item[1], str) and isinstance(item[2], list)
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                        for d in item[2])):
            raise ValueError(f"malformed array description {item!r}")
        name, dtype, shape = item
        dtype = np.dtype(dtype)
        if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or name in seen:
            raise ValueError(f"array {name!r}: unsupported dtype {dtype} or duplicate name")
        seen.add(name)
        out.append((name, dtype, tuple(shape)))
    return out


def _read_array(zf, info, dtype, shape, h=None):
    """Read one .npy entry whose header must say exactly ``dtype`` and ``shape`` (any
    1-D shape when None), C order, and whose size must match: checked before the data
    is allocated. Feeds the data bytes to ``h``. Reading to the end of the entry makes
    zipfile verify its CRC-32 as well."""
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            hdr_shape, fortran, hdr_dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            hdr_shape, fortran, hdr_dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"entry {info.filename}: unsupported .npy version {version}")
        if hdr_dtype != dtype or fortran or (shape is not None and hdr_shape != shape) \
                or (shape is None and len(hdr_shape) != 1):
            raise ValueError(f"entry {info.filename} holds {hdr_dtype} {hdr_shape}, "
                             f"expected {dtype} {shape if shape is not None else '(n,)'}")
        nbytes = math.prod(hdr_shape) * dtype.itemsize
        if f.tell() + nbytes != info.file_size:
            raise ValueError(f"entry {info.filename} has {info.file_size - f.tell()} data "
                             f"bytes, expected {nbytes} (truncated or corrupt)")
        out = np.empty(hdr_shape, dtype=dtype)
        buf = out.reshape(-1).view(np.uint8)
        pos = 0
        while pos < nbytes:
            chunk = f.read(min(_CHUNK, nbytes - pos))
            if not chunk:
                raise ValueError(f"entry {info.filename} is truncated")
            buf[pos:pos + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
            pos += len(chunk)
        if f.read(1):
            raise ValueError(f"entry {info.filename} has trailing data")
    if h is not None:
        h.update(buf)
    return out


def load(optimizer, path):
    """Verify the checkpoint at ``path`` and load it into ``optimizer``; on any error
    (ValueError/TypeError naming the file) the optimizer is unchanged."""
    path = os.fspath(path)
    sd = read_checkpoint(path)
    mine = getattr(optimizer, "algorithm", None)
    if sd.get("algorithm") != mine:
        raise ValueError(f"checkpoint {path} holds a {sd.get('algorithm')!r} optimizer's "
                         f"state; this optimizer is {mine!r} ({type(optimizer).__name__})")
    try:
        optimizer.load_state_dict(sd)
    except (TypeError, ValueError) as e:
        raise type(e)(f"checkpoint {path} does not fit this optimizer: {e}") from None
