"""LeRobot v3.0 datasets on disk: write them (:class:`LeRobotWriter`) and read them (:class:`LeRobotDataset`).

We implement the format ourselves with pyarrow and PyAV (``lerobot`` itself pulls a second torch, see
DESIGN.md), following lerobot's own v3.0 writer (``lerobot/datasets/{utils,dataset_writer,dataset_metadata,
compute_stats,video_utils}.py``). Layout of a dataset root::

    meta/info.json                                  written LAST by finalize(): its presence marks a complete dataset
    meta/stats.json                                 {feature: {min,max,mean,std,count,q01,q10,q50,q90,q99}}
    meta/tasks.parquet                              columns task_index (int64), task (string, the pandas index)
    meta/episodes/chunk-000/file-000.parquet        one row per episode (columns listed in EPISODES_BASE_COLUMNS,
                                                    videos/<key>/..., stats/<feature>/<stat>, meta/episodes/...)
    data/chunk-000/file-000.parquet                 one row per frame, several episodes per file (one row group each)
    videos/<key>/chunk-000/file-000.mp4             several episodes concatenated in time per file

Frame ``k`` of an episode is, in its video file, the frame at time ``videos/<key>/from_timestamp + timestamp[k]``
(lerobot's reader does exactly this lookup, with a 1e-4 s tolerance). Files roll over to the next
``file-XXX`` once they pass ``data_files_size_in_mb`` / ``video_files_size_in_mb``; a chunk folder holds at most
``chunks_size`` files.

Differences from lerobot's writer, all invisible to lerobot's reader:

* Videos are encoded straight into the open multi-episode mp4 (one encoder per camera and file, a keyframe forced
  at each episode start) instead of encoding one mp4 per episode and concatenating with the ffconcat demuxer.
  Timestamps come out identical: episode ``e`` spans ``[from_timestamp, from_timestamp + T/fps)``.
* ``stats.json`` holds exact statistics over every frame (quantiles are ``np.quantile``'s linear ones; image
  statistics come from exact per-channel 256-bin histograms of the uint8 frames *before* encoding). lerobot
  aggregates per-episode estimates (histogram quantiles over a subsample of frames) instead.

Video codec choice (measured with PyAV 18 / libx264 / SVT-AV1 4.1 on 100 frames of 64x64):

=================================  ==========================  ================================  ==========
codec, pix_fmt, settings           smooth gradients + square   same + per-pixel texture (0..40)  size/frame
=================================  ==========================  ================================  ==========
libsvtav1 yuv420p crf30 g2 (lr)    29.3 dB                     24.2 dB                           0.2-0.8 kB
libx264 yuv420p crf18 g2           31.9 dB                     25.7 dB                           0.3-1.0 kB
libx264 yuv444p crf18 g2           39.4 dB                     30.4 dB                           0.3-1.3 kB
**libx264 yuv444p crf12 g10**      **42.5 dB**                 **36.7 dB**                       0.2-0.9 kB
libx264 yuv444p crf0 (ceiling)     52.2 dB                     52.1 dB                           3-3.7 kB
=================================  ==========================  ================================  ==========

At 64x64 the chroma subsampling of yuv420p alone caps PSNR at ~26-32 dB (a 2x2 chroma block is a large part of a
small object), so the default is **H.264 (libx264), yuv444p, crf 12, GOP 10**: ~42 dB on rendered-like content at
about the size of lerobot's AV1 default. torchcodec and PyAV (lerobot's two decoders) read it (CPU decoding; NVDEC
does not do 4:4:4 H.264). ``video_codec="libsvtav1", pix_fmt="yuv420p", crf=30, gop=2`` reproduces lerobot's own
default encoding exactly.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from collections import OrderedDict
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from av.video.frame import PictureType
from av.video.reformatter import VideoReformatter

from repwam.errors import RepwamError

# ----------------------------------------------------------------------------------------------------------------
# The v3.0 spec (values as in lerobot/datasets/utils.py and lerobot/utils/constants.py)
# ----------------------------------------------------------------------------------------------------------------
CODEBASE_VERSION = "v3.0"
DEFAULT_CHUNK_SIZE = 1000  # max files per chunk-XXX folder
DEFAULT_DATA_FILE_SIZE_IN_MB = 100
DEFAULT_VIDEO_FILE_SIZE_IN_MB = 200

INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
CHUNK_FILE_PATTERN = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DEFAULT_EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE_PATTERN + ".parquet"
DEFAULT_DATA_PATH = "data/" + CHUNK_FILE_PATTERN + ".parquet"
DEFAULT_VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE_PATTERN + ".mp4"

# Per-frame bookkeeping columns every dataset has; the writer fills them, callers never pass them.
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": (1,), "names": None},
    "frame_index": {"dtype": "int64", "shape": (1,), "names": None},
    "episode_index": {"dtype": "int64", "shape": (1,), "names": None},
    "index": {"dtype": "int64", "shape": (1,), "names": None},
    "task_index": {"dtype": "int64", "shape": (1,), "names": None},
}

QUANTILES: tuple[float, ...] = (0.01, 0.10, 0.50, 0.90, 0.99)  # lerobot's DEFAULT_QUANTILES -> q01 ... q99
QUANTILE_KEYS: tuple[str, ...] = tuple(f"q{round(q * 100):02d}" for q in QUANTILES)
STAT_KEYS: tuple[str, ...] = ("min", "max", "mean", "std", "count", *QUANTILE_KEYS)

# Episodes-parquet columns written for every dataset, in lerobot's order; then videos/<key>/{chunk_index,
# file_index,from_timestamp,to_timestamp} per camera, stats/<feature>/<stat>, meta/episodes/{chunk_index,file_index},
# then any extra per-episode columns the caller passed.
EPISODES_BASE_COLUMNS: tuple[str, ...] = (
    "episode_index",
    "tasks",
    "length",
    "data/chunk_index",
    "data/file_index",
    "dataset_from_index",
    "dataset_to_index",
)
_RESERVED_PREFIXES = ("stats/", "videos/", "data/", "meta/")
_IMAGE_ARROW_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # HF `datasets.Image()` storage
# Entries an interrupted or previous dataset write can leave in a root; anything else makes overwrite refuse.
_DATASET_ENTRIES = {"meta", "data", "videos", "images", "README.md", ".gitattributes"}


def camera_key(name: str) -> str:
    """A camera's feature key: "corner3" -> "observation.images.corner3" (a full key is kept as it is)."""
    return name if name.startswith("observation.images.") else f"observation.images.{name}"


def _next_chunk_file(chunk_index: int, file_index: int, chunks_size: int) -> tuple[int, int]:
    """The (chunk, file) after this one: a chunk folder holds ``chunks_size`` files."""
    if file_index + 1 >= chunks_size:
        return chunk_index + 1, 0
    return chunk_index, file_index + 1


# ----------------------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------------------
def numeric_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Exact per-dimension statistics of a (N, D) array: min/max/mean/std (population)/q01..q99 each (D,), count (1,)."""
    x = np.asarray(values, dtype=np.float64)  # (N, D)
    stats: dict[str, np.ndarray] = {
        "min": x.min(axis=0),
        "max": x.max(axis=0),
        "mean": x.mean(axis=0),
        "std": x.std(axis=0),
        "count": np.array([x.shape[0]], dtype=np.int64),
    }
    for key, q in zip(QUANTILE_KEYS, np.quantile(x, QUANTILES, axis=0), strict=True):  # (len(QUANTILES), D)
        stats[key] = q
    return stats


class PixelHistogram:
    """Exact per-channel statistics of uint8 RGB frames, kept as a (3, 256) count table.

    ``stats()`` gives lerobot's image-stat layout: every statistic (3, 1, 1) and scaled to [0, 1] (divided by
    255), ``count`` (1,) = number of frames. Quantiles equal ``np.quantile(pixels_of_channel, q)`` (linear).
    """

    def __init__(self) -> None:
        self.counts = np.zeros((3, 256), dtype=np.int64)  # (C, value)
        self.num_frames = 0

    def update(self, frames: np.ndarray) -> None:
        """frames: uint8 (T, H, W, 3)."""
        for c in range(3):
            self.counts[c] += np.bincount(frames[..., c].ravel(), minlength=256)
        self.num_frames += frames.shape[0]

    def merge(self, other: PixelHistogram) -> None:
        self.counts += other.counts
        self.num_frames += other.num_frames

    def stats(self) -> dict[str, np.ndarray]:
        values = np.arange(256, dtype=np.float64)
        n = self.counts.sum(axis=1).astype(np.float64)  # (C,) pixels per channel
        mean = (self.counts * values).sum(axis=1) / n
        var = (self.counts * (values - mean[:, None]) ** 2).sum(axis=1) / n
        cum = np.cumsum(self.counts, axis=1)  # (C, 256)
        out: dict[str, np.ndarray] = {
            "min": np.array([np.flatnonzero(cnt)[0] for cnt in self.counts], dtype=np.float64),
            "max": np.array([np.flatnonzero(cnt)[-1] for cnt in self.counts], dtype=np.float64),
            "mean": mean,
            "std": np.sqrt(var),
        }
        for key, q in zip(QUANTILE_KEYS, QUANTILES, strict=True):
            per_channel = []
            for c in range(3):
                # np.quantile(..., method="linear") on the sorted pixels s: s[lo] + frac * (s[lo + 1] - s[lo]).
                pos = q * (n[c] - 1)
                lo = int(math.floor(pos))
                hi = min(lo + 1, int(n[c]) - 1)
                s_lo = np.searchsorted(cum[c], lo, side="right")  # sorted[i] = first value whose cum count > i
                s_hi = np.searchsorted(cum[c], hi, side="right")
                per_channel.append(s_lo + (pos - lo) * (s_hi - s_lo))
            out[key] = np.array(per_channel, dtype=np.float64)
        result = {k: (v / 255.0).reshape(3, 1, 1) for k, v in out.items()}  # (3, 1, 1) in [0, 1]
        result["count"] = np.array([self.num_frames], dtype=np.int64)
        return result


def _stats_to_json(stats: dict[str, np.ndarray]) -> dict[str, Any]:
    return {k: np.asarray(v).tolist() for k, v in stats.items()}


# ----------------------------------------------------------------------------------------------------------------
# Video encoding
# ----------------------------------------------------------------------------------------------------------------
class _VideoFileWriter:
    """One mp4 being filled with consecutive episodes of one camera (frame n sits at time n / fps)."""

    def __init__(
        self,
        path: Path,
        *,
        fps: int,
        height: int,
        width: int,
        codec: str,
        pix_fmt: str,
        options: dict[str, str],
    ) -> None:
        self.path = path
        self.fps = fps
        self.num_frames = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(path), mode="w", options={"movflags": "faststart"})
        self._stream = self._container.add_stream(codec, rate=fps, options=options)
        self._stream.pix_fmt = pix_fmt
        self._stream.height = height
        self._stream.width = width
        self._time_base = Fraction(1, fps)

    def add_episode(self, frames: np.ndarray) -> tuple[float, float]:
        """Append uint8 (T, H, W, 3) frames; returns the episode's (from_timestamp, to_timestamp) in this file."""
        start = self.num_frames
        for k, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.num_frames
            frame.time_base = self._time_base
            if k == 0:  # a keyframe at each episode start: decoding an episode never reads the previous one
                frame.pict_type = PictureType.I
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self.num_frames += 1
        return start / self.fps, self.num_frames / self.fps

    def size_mb(self) -> float:
        return self.path.stat().st_size / 2**20 if self.path.exists() else 0.0

    def close(self) -> None:
        for packet in self._stream.encode():  # flush the encoder's delayed frames
            self._container.mux(packet)
        self._container.close()


def probe_video_info(path: Path) -> dict[str, Any]:
    """The stream-derived half of lerobot's per-video ``features[key]["info"]`` (``video.*`` keys, has_audio)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = {
            "video.height": stream.height,
            "video.width": stream.width,
            "video.codec": stream.codec_context.codec.canonical_name,
            "video.pix_fmt": stream.pix_fmt,
            "video.fps": int(stream.base_rate),
            "video.channels": len(av.VideoFormat(stream.pix_fmt).components),
            "has_audio": len(container.streams.audio) > 0,
        }
    return info


# ----------------------------------------------------------------------------------------------------------------
# Writer
# ----------------------------------------------------------------------------------------------------------------
def _check_feature_spec(key: str, ft: dict[str, Any]) -> dict[str, Any]:
    """Validate one user feature spec; return a normalised copy (shape as a tuple)."""
    if "/" in key:
        raise RepwamError(f"feature name {key!r} contains '/', which the LeRobot format reserves (stats/<key>/...)")
    if key in DEFAULT_FEATURES:
        raise RepwamError(f"feature {key!r} is added automatically; do not declare it")
    if not isinstance(ft, dict) or "dtype" not in ft or "shape" not in ft:
        raise RepwamError(f"feature {key!r} must be a dict with 'dtype' and 'shape', got {ft!r}")
    spec = dict(ft)
    spec["shape"] = tuple(int(s) for s in ft["shape"])
    spec.setdefault("names", None)
    dtype = spec["dtype"]
    if dtype in ("video", "image"):
        if len(spec["shape"]) != 3 or spec["shape"][2] != 3:
            raise RepwamError(f"{dtype} feature {key!r} needs shape (height, width, 3), got {spec['shape']}")
    else:
        try:
            np_dtype = np.dtype(dtype)
        except TypeError:
            raise RepwamError(f"feature {key!r} has unsupported dtype {dtype!r}") from None
        if np_dtype.kind not in "biuf":
            raise RepwamError(f"feature {key!r} has unsupported dtype {dtype!r} (numeric, 'video' or 'image' only)")
        if len(spec["shape"]) != 1 or spec["shape"][0] < 1:
            raise RepwamError(f"feature {key!r}: numeric features must have shape (D,), got {spec['shape']}")
    return spec


class LeRobotWriter:
    """Writes a LeRobot v3.0 dataset. Episodes are appended one at a time; nothing marks the dataset complete
    until finalize() writes meta/info.json last, so an interrupted write never looks like a finished dataset.

    Usable as a context manager: a clean exit finalizes, an exception only closes the open files.

    Args:
        root: dataset folder; must be absent or empty unless ``overwrite`` (then a previous dataset there is
            deleted; a folder holding anything else is refused).
        fps: frames per second of every episode.
        features: lerobot-style specs, e.g. ``{"observation.images.corner": {"dtype": "video", "shape": (H, W, 3),
            "names": ["height", "width", "channels"]}, "observation.state": {"dtype": "float32", "shape": (D,),
            "names": [...] or None}, "action": {...}}``. ``timestamp, frame_index, episode_index, index,
            task_index`` are added automatically. dtypes: numeric (shape (D,)), ``video`` (mp4) or ``image``
            (PNG bytes inside the data parquet).
        robot_type: stored in info.json.
        video_codec, pix_fmt, crf, gop, preset: encoder settings (see the module docstring for the choice).
        data_file_size_mb, video_file_size_mb, chunks_size: file roll-over limits, stored in info.json.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        fps: int,
        features: dict[str, dict],
        robot_type: str | None = None,
        video_codec: str = "libx264",
        pix_fmt: str = "yuv444p",
        crf: int = 12,
        gop: int = 10,
        preset: str | int | None = None,
        data_file_size_mb: int = DEFAULT_DATA_FILE_SIZE_IN_MB,
        video_file_size_mb: int = DEFAULT_VIDEO_FILE_SIZE_IN_MB,
        chunks_size: int = DEFAULT_CHUNK_SIZE,
        overwrite: bool = False,
    ) -> None:
        if not isinstance(fps, int | np.integer) or fps <= 0:
            raise RepwamError(f"fps must be a positive integer, got {fps!r}")
        for name, value in (
            ("data_file_size_mb", data_file_size_mb),
            ("video_file_size_mb", video_file_size_mb),
            ("chunks_size", chunks_size),
        ):
            if value <= 0:
                raise RepwamError(f"{name} must be positive, got {value!r}")
        if not features:
            raise RepwamError("features is empty: declare at least one feature (e.g. 'action')")

        self.root = Path(root)
        self.fps = int(fps)
        self.robot_type = robot_type
        self.chunks_size = int(chunks_size)
        self.data_file_size_mb = data_file_size_mb
        self.video_file_size_mb = video_file_size_mb

        user_features = {key: _check_feature_spec(key, ft) for key, ft in features.items()}
        self.features: dict[str, dict[str, Any]] = {**user_features, **{k: dict(v) for k, v in DEFAULT_FEATURES.items()}}
        self.video_keys = [k for k, ft in self.features.items() if ft["dtype"] == "video"]
        self.image_keys = [k for k, ft in self.features.items() if ft["dtype"] == "image"]
        self._camera_keys = self.video_keys + self.image_keys
        self._data_keys = [k for k, ft in self.features.items() if ft["dtype"] != "video"]  # parquet columns, in order

        self._video_settings = self._check_video_settings(video_codec, pix_fmt, crf, gop, preset)
        self._prepare_root(overwrite)

        self._schema = pa.schema([(k, self._arrow_type(self.features[k])) for k in self._data_keys])
        self._tasks: dict[str, int] = {}
        self._episodes: list[dict[str, Any]] = []  # episodes-parquet rows (stats included)
        self._extra_kinds: dict[str, type] = {}  # extra column -> bool/int/float/str
        self._total_frames = 0
        self._pixel_hists = {k: PixelHistogram() for k in self._camera_keys}
        # open data parquet: location, writer, estimated bytes
        self._data_loc = (0, 0)
        self._data_writer: pq.ParquetWriter | None = None
        self._data_bytes = 0
        self._data_paths: list[Path] = []
        # open video file per camera
        self._video_loc = {k: (0, 0) for k in self.video_keys}
        self._video_writers: dict[str, _VideoFileWriter | None] = {k: None for k in self.video_keys}
        self._closed = False
        self._finalized = False

    # -- setup ----------------------------------------------------------------------------------------------
    def _check_video_settings(
        self, codec: str, pix_fmt: str, crf: int, gop: int, preset: str | int | None
    ) -> dict[str, Any]:
        try:
            av_codec = av.codec.Codec(codec, "w")
        except Exception:
            raise RepwamError(f"video codec {codec!r} has no encoder in this PyAV build (try 'libx264')") from None
        formats = [f.name for f in (av_codec.video_formats or [])]
        if formats and pix_fmt not in formats:
            raise RepwamError(f"video codec {codec!r} cannot encode pix_fmt {pix_fmt!r}; it supports {formats}")
        if pix_fmt.startswith(("yuv420", "nv12")):
            for key in self.video_keys:
                h, w, _ = self.features[key]["shape"]
                if h % 2 or w % 2:
                    raise RepwamError(f"video feature {key!r}: {pix_fmt} needs even height and width, got {h}x{w}")
        options = {"crf": str(crf), "g": str(gop)}
        if preset is not None:
            options["preset"] = str(preset)
        return {"codec": codec, "pix_fmt": pix_fmt, "crf": crf, "g": gop, "preset": preset, "options": options}

    def _prepare_root(self, overwrite: bool) -> None:
        root = self.root
        if root.exists() and not root.is_dir():
            raise RepwamError(f"output path {root} exists and is not a directory")
        if root.exists() and any(root.iterdir()):
            if not overwrite:
                raise RepwamError(
                    f"output directory {root} is not empty; choose a new path or pass overwrite=True "
                    "(--overwrite) to replace the dataset there"
                )
            foreign = sorted(p.name for p in root.iterdir() if p.name not in _DATASET_ENTRIES)
            if foreign:
                raise RepwamError(
                    f"refusing to overwrite {root}: it holds {foreign}, which are not part of a LeRobot dataset"
                )
            try:
                (root / INFO_PATH).unlink(missing_ok=True)  # first, so a half-deleted root is never "complete"
                for entry in root.iterdir():
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            except OSError as e:
                raise RepwamError(f"cannot clear {root} for overwrite: {e}") from None
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / ".repwam-write-probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise RepwamError(f"cannot write the dataset to {root}: {e.strerror or e}") from None

    @staticmethod
    def _arrow_type(ft: dict[str, Any]) -> pa.DataType:
        if ft["dtype"] == "image":
            return _IMAGE_ARROW_TYPE
        value_type = pa.from_numpy_dtype(np.dtype(ft["dtype"]))
        if tuple(ft["shape"]) == (1,):
            return value_type  # lerobot stores (1,) features as plain scalars (datasets.Value)
        return pa.list_(value_type, ft["shape"][0])  # fixed-size list (datasets.Sequence(length=D))

    # -- validation -------------------------------------------------------------------------------------------
    def _validate_frames(self, frames: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        if not isinstance(frames, dict):
            raise RepwamError(f"frames must be a dict of arrays, got {type(frames).__name__}")
        expected = [k for k in self.features if k not in DEFAULT_FEATURES]
        given_defaults = sorted(set(frames) & set(DEFAULT_FEATURES))
        if given_defaults:
            raise RepwamError(f"frames must not contain {given_defaults}: the writer fills them")
        missing = [k for k in expected if k not in frames]
        extra = sorted(set(frames) - set(expected))
        if missing or extra:
            raise RepwamError(
                f"episode features do not match the dataset: missing {missing}, unexpected {extra} "
                f"(expected {expected})"
            )
        out: dict[str, np.ndarray] = {}
        length: int | None = None
        for key in expected:
            ft = self.features[key]
            value = np.asarray(frames[key])
            shape = tuple(ft["shape"])
            if ft["dtype"] in ("video", "image"):
                if value.ndim != 4 or value.shape[1:] != shape:
                    raise RepwamError(
                        f"feature {key!r}: expected frames of shape (T, {', '.join(map(str, shape))}), "
                        f"got {value.shape}"
                    )
                if value.dtype != np.uint8:
                    raise RepwamError(f"feature {key!r}: frames must be uint8, got {value.dtype}")
            else:
                target = np.dtype(ft["dtype"])
                if shape == (1,) and value.ndim == 1:
                    value = value[:, None]  # (T,) -> (T, 1)
                if value.ndim != 2 or value.shape[1:] != shape:
                    raise RepwamError(f"feature {key!r}: expected shape (T, {shape[0]}), got {value.shape}")
                if not np.can_cast(value.dtype, target, casting="same_kind"):
                    raise RepwamError(f"feature {key!r}: dtype {value.dtype} cannot be stored as {target}")
                value = value.astype(target, copy=False)
                if target.kind == "f" and not np.isfinite(value).all():
                    bad = int(np.flatnonzero(~np.isfinite(value).all(axis=1))[0])
                    raise RepwamError(f"feature {key!r} has a non-finite value (NaN/inf) at frame {bad}")
            if length is None:
                length = value.shape[0]
            elif value.shape[0] != length:
                raise RepwamError(
                    f"feature {key!r} has {value.shape[0]} frames but {expected[0]!r} has {length}: "
                    "every feature needs the same leading length T"
                )
            out[key] = value
        if not length:
            raise RepwamError("an episode needs at least one frame")
        return out, length

    def _validate_tasks(self, task: str | Sequence[str], length: int) -> list[str]:
        tasks = [task] * length if isinstance(task, str) else list(task)
        if len(tasks) != length:
            raise RepwamError(f"task: give one string, or one per frame ({length}), got {len(tasks)}")
        for t in tasks:
            if not isinstance(t, str) or not t.strip():
                raise RepwamError(f"task must be a non-empty string, got {t!r}")
        return tasks

    def _validate_extra(self, extra: dict[str, Any] | None) -> dict[str, Any]:
        if not extra:
            return {}
        out: dict[str, Any] = {}
        for key, value in extra.items():
            if not isinstance(key, str) or not key:
                raise RepwamError(f"extra episode column names must be non-empty strings, got {key!r}")
            if key in EPISODES_BASE_COLUMNS or key.startswith(_RESERVED_PREFIXES):
                raise RepwamError(f"extra episode column {key!r} collides with a LeRobot episodes column")
            if isinstance(value, np.generic):
                value = value.item()
            kind = bool if isinstance(value, bool) else type(value)
            if kind not in (bool, int, float, str):
                raise RepwamError(
                    f"extra episode column {key!r} must be a scalar bool/int/float/str, got {type(value).__name__}"
                )
            previous = self._extra_kinds.get(key)
            if previous is not None and previous != kind and {previous, kind} != {int, float}:
                raise RepwamError(
                    f"extra episode column {key!r} was {previous.__name__} in earlier episodes, now {kind.__name__}"
                )
            out[key] = value
        return out

    # -- writing --------------------------------------------------------------------------------------------
    def add_episode(
        self,
        frames: dict[str, np.ndarray],
        task: str | list[str],
        extra_episode_meta: dict[str, Any] | None = None,
    ) -> int:
        """Append one episode; returns its episode_index.

        Args:
            frames: every declared feature, leading dim T: numeric (T, D) (or (T,) when D == 1); video/image
                uint8 (T, H, W, 3).
            task: the episode's instruction, or one per frame.
            extra_episode_meta: extra scalar columns of the episodes parquet, e.g. ``{"success": True, "seed": 3}``.
        """
        if self._closed:
            raise RepwamError(f"writer for {self.root} is already finalized or closed")
        values, length = self._validate_frames(frames)
        tasks = self._validate_tasks(task, length)
        extra = self._validate_extra(extra_episode_meta)

        episode_index = len(self._episodes)
        for t in tasks:
            self._tasks.setdefault(t, len(self._tasks))
        frame_index = np.arange(length, dtype=np.int64)  # (T,)
        values["timestamp"] = (frame_index / self.fps).astype(np.float32)[:, None]
        values["frame_index"] = frame_index[:, None]
        values["episode_index"] = np.full((length, 1), episode_index, dtype=np.int64)
        values["index"] = (self._total_frames + frame_index)[:, None]
        values["task_index"] = np.array([self._tasks[t] for t in tasks], dtype=np.int64)[:, None]

        row: dict[str, Any] = {
            "episode_index": episode_index,
            "tasks": list(dict.fromkeys(tasks)),  # unique, in order of first appearance
            "length": length,
        }
        row.update(self._write_data(values, length))
        for key in self.video_keys:
            row.update(self._write_video(key, values[key]))

        for key, ft in self.features.items():  # per-episode stats, stored as stats/<feature>/<stat> columns
            if ft["dtype"] in ("video", "image"):
                hist = PixelHistogram()
                hist.update(values[key])
                self._pixel_hists[key].merge(hist)
                stats = hist.stats()
            else:
                stats = numeric_stats(values[key])
            for stat_key in STAT_KEYS:
                row[f"stats/{key}/{stat_key}"] = np.asarray(stats[stat_key]).tolist()

        for key, value in extra.items():
            kind = bool if isinstance(value, bool) else type(value)
            previous = self._extra_kinds.get(key)
            self._extra_kinds[key] = float if {previous, kind} == {int, float} else kind
        row["_extra"] = extra
        self._episodes.append(row)
        self._total_frames += length
        return episode_index

    def _data_table(self, values: dict[str, np.ndarray], length: int) -> pa.Table:
        columns = []
        for key in self._data_keys:
            ft, value = self.features[key], values[key]
            arrow_type = self._schema.field(key).type
            if ft["dtype"] == "image":
                columns.append(pa.array([{"bytes": _png_bytes(img), "path": None} for img in value], _IMAGE_ARROW_TYPE))
            elif pa.types.is_fixed_size_list(arrow_type):
                flat = pa.array(value.reshape(-1), type=arrow_type.value_type)  # (T * D,)
                columns.append(pa.FixedSizeListArray.from_arrays(flat, arrow_type.list_size))
            else:
                columns.append(pa.array(value.reshape(length), type=arrow_type))
        return pa.Table.from_arrays(columns, schema=self._schema)

    def _write_data(self, values: dict[str, np.ndarray], length: int) -> dict[str, Any]:
        table = self._data_table(values, length)
        if self._data_writer is not None and self._data_bytes + table.nbytes > self.data_file_size_mb * 2**20:
            self._data_writer.close()
            self._data_writer = None
            self._data_loc = _next_chunk_file(*self._data_loc, self.chunks_size)
        chunk_index, file_index = self._data_loc
        if self._data_writer is None:
            path = self.root / DEFAULT_DATA_PATH.format(chunk_index=chunk_index, file_index=file_index)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data_writer = pq.ParquetWriter(path, self._schema, compression="snappy")
            self._data_paths.append(path)
            self._data_bytes = 0
        self._data_writer.write_table(table)  # one row group per episode
        self._data_bytes += table.nbytes
        return {
            "data/chunk_index": chunk_index,
            "data/file_index": file_index,
            "dataset_from_index": self._total_frames,
            "dataset_to_index": self._total_frames + length,
        }

    def _write_video(self, key: str, frames: np.ndarray) -> dict[str, Any]:
        writer = self._video_writers[key]
        if writer is not None and writer.num_frames > 0:
            size = writer.size_mb()
            if size + size / writer.num_frames * len(frames) >= self.video_file_size_mb:
                writer.close()
                writer = None
                self._video_loc[key] = _next_chunk_file(*self._video_loc[key], self.chunks_size)
        chunk_index, file_index = self._video_loc[key]
        if writer is None:
            h, w, _ = self.features[key]["shape"]
            path = self.root / DEFAULT_VIDEO_PATH.format(video_key=key, chunk_index=chunk_index, file_index=file_index)
            s = self._video_settings
            writer = _VideoFileWriter(
                path, fps=self.fps, height=h, width=w, codec=s["codec"], pix_fmt=s["pix_fmt"], options=s["options"]
            )
            self._video_writers[key] = writer
        from_ts, to_ts = writer.add_episode(frames)
        return {
            f"videos/{key}/chunk_index": chunk_index,
            f"videos/{key}/file_index": file_index,
            f"videos/{key}/from_timestamp": from_ts,
            f"videos/{key}/to_timestamp": to_ts,
        }

    def close(self) -> None:
        """Close open files without finalizing (the dataset stays incomplete: no meta/info.json)."""
        if self._closed:
            return
        self._closed = True
        if self._data_writer is not None:
            self._data_writer.close()
            self._data_writer = None
        for key, writer in self._video_writers.items():
            if writer is not None:
                writer.close()
                self._video_writers[key] = None

    def finalize(self) -> None:
        """Close files and write stats.json, tasks.parquet, the episodes parquet(s), then info.json last."""
        if self._finalized:
            return
        if not self._episodes:
            self.close()
            raise RepwamError(f"no episodes were added to {self.root}; nothing to finalize")
        self.close()
        meta = self.root / "meta"
        meta.mkdir(parents=True, exist_ok=True)

        for key in self.video_keys:  # lerobot's per-video info: stream facts + the encoder settings used
            first = self.root / DEFAULT_VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0)
            s = self._video_settings
            self.features[key]["info"] = {
                **probe_video_info(first),
                "video.g": s["g"],
                "video.crf": s["crf"],
                "video.preset": s["preset"],
                "video.fast_decode": 0,
                "video.video_backend": "pyav",
                "video.extra_options": {},
                "is_depth_map": False,
            }

        stats = self._global_stats()
        (self.root / STATS_PATH).write_text(json.dumps({k: _stats_to_json(v) for k, v in stats.items()}, indent=4))
        self._write_tasks()
        self._write_episodes()

        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self._episodes),
            "total_frames": self._total_frames,
            "total_tasks": len(self._tasks),
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": self.data_file_size_mb,
            "video_files_size_in_mb": self.video_file_size_mb,
            "fps": self.fps,
            "splits": {"train": f"0:{len(self._episodes)}"},
            "data_path": DEFAULT_DATA_PATH,
            "video_path": DEFAULT_VIDEO_PATH if self.video_keys else None,
            "features": {k: {**ft, "shape": list(ft["shape"])} for k, ft in self.features.items()},
        }
        tmp = self.root / (INFO_PATH + ".tmp")
        tmp.write_text(json.dumps(info, indent=4))
        os.replace(tmp, self.root / INFO_PATH)  # atomic: info.json is either absent or complete
        self._finalized = True

    def _global_stats(self) -> dict[str, dict[str, np.ndarray]]:
        """Exact stats over all frames: numeric columns re-read one at a time from the data files."""
        stats: dict[str, dict[str, np.ndarray]] = {}
        for key, ft in self.features.items():
            if ft["dtype"] in ("video", "image"):
                stats[key] = self._pixel_hists[key].stats()
                continue
            parts = [_column_to_numpy(pq.read_table(p, columns=[key]).column(key)) for p in self._data_paths]
            values = np.concatenate(parts).reshape(self._total_frames, -1)  # (N, D)
            stats[key] = numeric_stats(values)
        return stats

    def _write_tasks(self) -> None:
        names = list(self._tasks)  # insertion order == task_index order
        table = pa.table(
            {"task_index": pa.array(range(len(names)), pa.int64()), "task": pa.array(names, pa.string())}
        )
        # Written the way pandas writes lerobot's DataFrame (task as the index): pandas restores the index.
        pandas_meta = {
            "index_columns": ["task"],
            "column_indexes": [
                {"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                 "metadata": {"encoding": "UTF-8"}}
            ],
            "columns": [
                {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                 "numpy_type": "int64", "metadata": None},
                {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
                 "metadata": None},
            ],
            "creator": {"library": "pyarrow", "version": pa.__version__},
            "pandas_version": "2.2.3",
        }
        table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
        pq.write_table(table, self.root / TASKS_PATH)

    def _write_episodes(self) -> None:
        rows = self._episodes
        names = [c for c in rows[0] if c != "_extra"]
        columns: dict[str, pa.Array] = {name: pa.array([r[name] for r in rows]) for name in names}
        table = pa.table(columns)
        # Split rows into files no larger than data_files_size_in_mb (lerobot uses the same limit for them).
        per_row = max(1.0, table.nbytes / len(rows))
        rows_per_file = max(1, int(self.data_file_size_mb * 2**20 // per_row))
        locs, loc = [], (0, 0)
        for i in range(len(rows)):
            if i and i % rows_per_file == 0:
                loc = _next_chunk_file(*loc, self.chunks_size)
            locs.append(loc)
        table = table.append_column("meta/episodes/chunk_index", pa.array([c for c, _ in locs], pa.int64()))
        table = table.append_column("meta/episodes/file_index", pa.array([f for _, f in locs], pa.int64()))
        for key, kind in self._extra_kinds.items():
            arrow_type = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}[kind]
            vals = [r["_extra"].get(key) for r in rows]
            if kind is float:
                vals = [None if v is None else float(v) for v in vals]
            table = table.append_column(key, pa.array(vals, arrow_type))
        for start in range(0, len(rows), rows_per_file):
            chunk_index, file_index = locs[start]
            path = self.root / DEFAULT_EPISODES_PATH.format(chunk_index=chunk_index, file_index=file_index)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table.slice(start, rows_per_file), path, compression="snappy")

    def __enter__(self) -> LeRobotWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.close()


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------------
# Reader
# ----------------------------------------------------------------------------------------------------------------
def _is_list(arrow_type: pa.DataType) -> bool:
    return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type)


def _column_to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Arrow column -> numpy: scalars (T,), fixed or uniform numeric lists (T, D) (nested: (T, D1, D2, ...)).

    Anything else (strings, ragged lists, structs such as lerobot's language columns) -> object array (T,).
    """
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    length = len(array)
    leaf, shape = array, []
    while _is_list(leaf.type) and leaf.null_count == 0:
        if pa.types.is_fixed_size_list(leaf.type):
            shape.append(leaf.type.list_size)
        else:
            lengths = pc.list_value_length(leaf).to_numpy(zero_copy_only=False)
            if len(lengths) and (lengths != lengths[0]).any():
                break  # ragged
            shape.append(int(lengths[0]) if len(lengths) else 0)
        leaf = leaf.flatten()
    numeric = pa.types.is_integer(leaf.type) or pa.types.is_floating(leaf.type) or pa.types.is_boolean(leaf.type)
    if numeric and not _is_list(leaf.type) and leaf.null_count == 0:
        return leaf.to_numpy(zero_copy_only=False).reshape(length, *shape)
    out = np.empty(length, dtype=object)
    out[:] = array.to_pylist()
    return out


class LeRobotDataset:
    """Reads a LeRobot v3.0 dataset written by repwam or by lerobot.

    Attributes:
        info: meta/info.json. stats: {feature: {stat: array}} from meta/stats.json ({} when absent).
        fps, features, tasks (by task_index), camera_keys (video + image features), video_keys, image_keys,
        num_episodes, num_frames, episodes (one dict per episode: episode_index, length, tasks,
        dataset_from_index, dataset_to_index, data/..., videos/..., and any extra columns).
    """

    def __init__(self, root: str | os.PathLike[str], *, tolerance_s: float = 1e-4) -> None:
        self.root = Path(root)
        self.tolerance_s = tolerance_s
        if not self.root.is_dir():
            raise RepwamError(f"dataset directory {self.root} does not exist")
        info_path = self.root / INFO_PATH
        if not info_path.is_file():
            raise RepwamError(
                f"not a complete LeRobot v3.0 dataset: {self.root} has no {INFO_PATH}; "
                "was `repwam data generate` interrupted?"
            )
        try:
            self.info: dict[str, Any] = json.loads(info_path.read_text())
        except (OSError, ValueError) as e:
            raise RepwamError(f"cannot read {info_path}: {e}") from None
        version = self.info.get("codebase_version")
        if version != CODEBASE_VERSION:
            raise RepwamError(
                f"{info_path} has codebase_version {version!r}; repwam reads only {CODEBASE_VERSION} "
                "(convert older datasets with lerobot's convert_dataset_v21_to_v30)"
            )
        for key in ("fps", "features", "data_path", "total_episodes", "total_frames"):
            if key not in self.info:
                raise RepwamError(f"{info_path} lacks the required key {key!r}")
        self.fps: int = int(self.info["fps"])
        self.features: dict[str, dict[str, Any]] = {
            k: {**ft, "shape": tuple(ft["shape"])} for k, ft in self.info["features"].items()
        }
        self.video_keys = [k for k, ft in self.features.items() if ft["dtype"] == "video"]
        self.image_keys = [k for k, ft in self.features.items() if ft["dtype"] == "image"]
        self.camera_keys: list[str] = [k for k, ft in self.features.items() if ft["dtype"] in ("video", "image")]
        if self.video_keys and not self.info.get("video_path"):
            raise RepwamError(f"{info_path} declares video features {self.video_keys} but no video_path")

        self.stats = self._load_stats()
        self.tasks: list[str] = self._load_tasks()
        self.episodes: list[dict[str, Any]] = self._load_episodes()
        self.num_episodes = len(self.episodes)
        self.num_frames = int(sum(ep["length"] for ep in self.episodes))
        if self.num_frames != int(self.info["total_frames"]):
            raise RepwamError(
                f"{info_path} says total_frames={self.info['total_frames']} but the episodes add up to "
                f"{self.num_frames}"
            )
        self._check_files()
        self._table_cache: OrderedDict[Path, pa.Table] = OrderedDict()

    # -- metadata --------------------------------------------------------------------------------------------
    def _load_stats(self) -> dict[str, dict[str, np.ndarray]]:
        path = self.root / STATS_PATH
        if not path.is_file():
            return {}
        try:
            raw = json.loads(path.read_text())
            return {ft: {k: np.atleast_1d(np.asarray(v)) for k, v in s.items()} for ft, s in raw.items()}
        except (OSError, ValueError, AttributeError) as e:
            raise RepwamError(f"cannot read {path}: {e}") from None

    def _read_parquet(self, path: Path, columns: list[str] | None = None) -> pa.Table:
        try:
            return pq.read_table(path, columns=columns)
        except FileNotFoundError:
            raise RepwamError(f"missing file {path} of the LeRobot dataset at {self.root}") from None
        except (OSError, pa.ArrowException) as e:
            raise RepwamError(f"cannot read {path} (corrupt parquet?): {e}") from None

    def _load_tasks(self) -> list[str]:
        path = self.root / TASKS_PATH
        if not path.is_file():
            if int(self.info.get("total_tasks", 0)) > 0:
                raise RepwamError(f"missing file {path} of the LeRobot dataset at {self.root}")
            return []
        table = self._read_parquet(path)
        names = table.column_names
        task_col = "task" if "task" in names else "__index_level_0__" if "__index_level_0__" in names else None
        if task_col is None or "task_index" not in names:
            raise RepwamError(f"{path} needs columns 'task' and 'task_index', has {names}")
        pairs = sorted(zip(table.column("task_index").to_pylist(), table.column(task_col).to_pylist(), strict=True))
        if [i for i, _ in pairs] != list(range(len(pairs))):
            raise RepwamError(f"{path}: task_index values are not 0..{len(pairs) - 1}")
        return [t for _, t in pairs]

    def _load_episodes(self) -> list[dict[str, Any]]:
        files = sorted((self.root / EPISODES_DIR).glob("*/*.parquet"))
        total = int(self.info["total_episodes"])
        if not files and total > 0:
            raise RepwamError(f"{self.root / EPISODES_DIR} has no episode parquet files (info.json says {total})")
        rows: list[dict[str, Any]] = []
        for path in files:
            try:
                names = pq.read_schema(path).names
            except (OSError, pa.ArrowException) as e:
                raise RepwamError(f"cannot read {path} (corrupt parquet?): {e}") from None
            columns = [n for n in names if not n.startswith("stats/")]  # stats stay on disk: faster, smaller
            rows.extend(self._read_parquet(path, columns).to_pylist())
        rows.sort(key=lambda r: r["episode_index"])
        if [r["episode_index"] for r in rows] != list(range(total)):
            raise RepwamError(
                f"{self.root / EPISODES_DIR} lists episodes {[r['episode_index'] for r in rows][:20]}..., "
                f"expected 0..{total - 1} (info.json total_episodes={total})"
            )
        for r in rows:
            for required in ("length", "data/chunk_index", "data/file_index"):
                if required not in r:
                    raise RepwamError(f"{self.root / EPISODES_DIR}: episodes lack the column {required!r}")
        return rows

    def _data_path(self, ep: dict[str, Any]) -> Path:
        return self.root / self.info["data_path"].format(
            chunk_index=ep["data/chunk_index"], file_index=ep["data/file_index"]
        )

    def _video_path(self, ep: dict[str, Any], key: str) -> Path:
        return self.root / self.info["video_path"].format(
            video_key=key, chunk_index=ep[f"videos/{key}/chunk_index"], file_index=ep[f"videos/{key}/file_index"]
        )

    def _check_files(self) -> None:
        """Every referenced data parquet has a readable footer; every mp4 opens with a video stream."""
        for path in dict.fromkeys(self._data_path(ep) for ep in self.episodes):
            if not path.is_file():
                raise RepwamError(f"missing data file {path} of the LeRobot dataset at {self.root}")
            try:
                pq.read_metadata(path)
            except (OSError, pa.ArrowException) as e:
                raise RepwamError(f"cannot read {path} (corrupt parquet?): {e}") from None
        for key in self.video_keys:
            for path in dict.fromkeys(self._video_path(ep, key) for ep in self.episodes):
                if not path.is_file():
                    raise RepwamError(f"missing video file {path} of the LeRobot dataset at {self.root}")
                try:
                    with av.open(str(path)) as container:
                        if not container.streams.video:
                            raise RepwamError(f"video file {path} has no video stream")
                except av.FFmpegError as e:
                    raise RepwamError(f"cannot open video file {path} (corrupt mp4?): {e}") from None

    # -- per-episode access ------------------------------------------------------------------------------------
    def _episode(self, ep: int) -> dict[str, Any]:
        if not 0 <= ep < self.num_episodes:
            raise RepwamError(f"episode {ep} out of range: {self.root} has {self.num_episodes} episodes")
        return self.episodes[ep]

    def _episode_table(self, ep: int) -> pa.Table:
        meta = self._episode(ep)
        path = self._data_path(meta)
        table = self._table_cache.get(path)
        if table is None:
            table = self._read_parquet(path)
            self._table_cache[path] = table
            while len(self._table_cache) > 2:  # episodes are usually read in order: keep the current file
                self._table_cache.popitem(last=False)
        self._table_cache.move_to_end(path)
        rows = table.filter(pc.equal(table.column("episode_index"), ep))
        if rows.num_rows != meta["length"]:
            raise RepwamError(f"{path} holds {rows.num_rows} rows of episode {ep}, episodes metadata says {meta['length']}")
        return rows

    def episode_length(self, ep: int) -> int:
        return int(self._episode(ep)["length"])

    def episode_data(self, ep: int) -> dict[str, np.ndarray]:
        """All non-camera columns of episode ``ep``: scalars (T,), vectors (T, D). Camera frames: episode_frames."""
        table = self._episode_table(ep)
        out: dict[str, np.ndarray] = {}
        for name in table.column_names:
            if name in self.camera_keys:
                continue
            try:
                out[name] = _column_to_numpy(table.column(name))
            except ValueError as e:
                raise RepwamError(f"{self._data_path(self.episodes[ep])}: column {name!r}: {e}") from None
        return out

    def episode_task(self, ep: int) -> str:
        """The episode's instruction (the first frame's task when an episode has several)."""
        tasks = self._episode(ep)["tasks"]
        if len(tasks) == 1:
            return tasks[0]
        first = int(self._episode_table(ep).column("task_index")[0].as_py())
        return self.tasks[first]

    def episode_frames(self, ep: int, key: str) -> np.ndarray:
        """uint8 (T, H, W, 3) frames of camera ``key`` for episode ``ep``."""
        if key not in self.camera_keys:
            raise RepwamError(f"{key!r} is not a camera feature of {self.root}; cameras: {self.camera_keys}")
        table = self._episode_table(ep)
        if key in self.image_keys:
            return self._decode_images(table.column(key))
        ft = self.features[key]
        if (ft.get("info") or {}).get("is_depth_map") or (ft.get("info") or {}).get("video.is_depth_map"):
            raise RepwamError(f"{key!r} is a depth video; repwam does not decode depth maps")
        meta = self.episodes[ep]
        path = self._video_path(meta, key)
        timestamps = table.column("timestamp").to_numpy().astype(np.float64)  # (T,)
        query = float(meta[f"videos/{key}/from_timestamp"]) + timestamps  # (T,) seconds in the file
        return self._decode_video(path, query, ep, key)

    def _decode_video(self, path: Path, query: np.ndarray, ep: int, key: str) -> np.ndarray:
        """Frames of ``path`` nearest to each query time (within tolerance_s): uint8 (T, H, W, 3).

        Seeks to the keyframe at or before the first query time and decodes forward only up to the last one.
        """
        tol = self.tolerance_s
        first, last = float(query.min()), float(query.max())
        times: list[float] = []
        images: list[np.ndarray] = []
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                to_rgb = VideoReformatter()  # one reused swscale context: ~7x faster than frame.to_ndarray(format=...)
                if first > tol:
                    container.seek(int(round(first / stream.time_base)), stream=stream, backward=True, any_frame=False)
                for frame in container.decode(stream):
                    if frame.pts is None:
                        continue
                    t = float(frame.pts * stream.time_base)
                    if t < first - tol:
                        continue
                    images.append(to_rgb.reformat(frame, format="rgb24").to_ndarray())  # (H, W, 3)
                    times.append(t)
                    if t >= last - tol:
                        break
        except av.FFmpegError as e:
            raise RepwamError(f"cannot decode {path} (episode {ep}, {key}): {e}") from None
        if not images:
            raise RepwamError(f"{path} has no frames in [{first:.4f}, {last:.4f}] s (episode {ep}, {key})")
        decoded = np.asarray(times)  # (M,)
        right = np.clip(np.searchsorted(decoded, query), 0, len(decoded) - 1)
        left = np.clip(right - 1, 0, len(decoded) - 1)
        nearest = np.where(np.abs(decoded[left] - query) <= np.abs(decoded[right] - query), left, right)  # (T,)
        error = np.abs(decoded[nearest] - query)
        if (error > tol).any():
            bad = int(np.argmax(error))
            raise RepwamError(
                f"{path}: no frame within {tol} s of t={query[bad]:.4f} s (frame {bad} of episode {ep}, {key}); "
                "the video is truncated or out of sync with the episodes metadata"
            )
        return np.stack(images)[nearest]

    def _decode_images(self, column: pa.ChunkedArray) -> np.ndarray:
        from PIL import Image

        out = []
        for item in column.to_pylist():
            data = item.get("bytes") if item else None
            source = io.BytesIO(data) if data else self.root / item["path"]
            with Image.open(source) as img:
                out.append(np.asarray(img.convert("RGB")))
        return np.stack(out)  # (T, H, W, 3)

    def __repr__(self) -> str:
        return (
            f"LeRobotDataset({str(self.root)!r}, episodes={self.num_episodes}, frames={self.num_frames}, "
            f"fps={self.fps}, cameras={self.camera_keys})"
        )
