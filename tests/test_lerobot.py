"""LeRobot v3.0 write/read (repwam.data.lerobot): round trip, lerobot's own layout, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from repwam.data.lerobot import (
    DEFAULT_DATA_PATH,
    DEFAULT_VIDEO_PATH,
    LeRobotDataset,
    LeRobotWriter,
)
from repwam.errors import RepwamError

CAM = "observation.images.corner"
FPS = 15
H, W = 64, 64
LENGTHS = [23, 40, 17]
TASKS = ["open the drawer", "press the button", "open the drawer"]
STAT_NAMES = ["min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"]
QS = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}

# Default encoding (libx264 yuv444p crf12) measured ~42 dB on these frames, AV1 yuv420p crf30 (lerobot's
# default) ~29 dB. 35 dB sits well below the first and well above what yuv420p chroma subsampling allows at 64x64
# (~32 dB), so it catches a silent fall-back to a lossier encoding. Alignment is checked separately: a frame
# decoded one step off matches its own source far worse than the true frame does (the square moves ~4 px/frame).
PSNR_MIN_DB = 35.0
PSNR_MIN_DB_AV1 = 26.0


def make_video(length: int, seed: int, h: int = H, w: int = W) -> np.ndarray:
    """uint8 (T, h, w, 3): smooth colour gradients drifting over time plus a moving two-colour square."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    frames = np.empty((length, h, w, 3), np.uint8)
    for t in range(length):
        img = np.stack(
            [x * 180 / w + 2 * t + 20, y * 180 / h + 30, 128 + 60 * np.sin((x + y) / 9 + t / 5 + phase)], axis=-1
        )
        cx = int(w / 2 + w / 3 * np.cos(t / 3 + phase))
        cy = int(h / 2 + h / 3 * np.sin(t / 3 + phase))
        img[max(cy - 6, 0) : cy + 6, max(cx - 6, 0) : cx + 6] = [250, 30, 30]
        img[max(cy - 2, 0) : cy + 2, max(cx - 6, 0) : cx] = [20, 220, 40]
        frames[t] = np.clip(img, 0, 255)
    return frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def assert_frames_match(decoded: np.ndarray, source: np.ndarray, min_db: float) -> None:
    assert decoded.shape == source.shape and decoded.dtype == np.uint8
    assert psnr(decoded, source) > min_db
    for t in range(1, len(source) - 1):  # every frame is its own source's best match among its neighbours
        own = psnr(decoded[t], source[t])
        assert own > psnr(decoded[t], source[t - 1]) and own > psnr(decoded[t], source[t + 1]), t


def features(with_video: bool = True) -> dict[str, dict]:
    feats: dict[str, dict] = {}
    if with_video:
        feats[CAM] = {"dtype": "video", "shape": (H, W, 3), "names": ["height", "width", "channels"]}
    feats["observation.state"] = {"dtype": "float32", "shape": (6,), "names": [f"q{i}" for i in range(6)]}
    feats["action"] = {"dtype": "float32", "shape": (4,), "names": None}
    return feats


def make_episodes(seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    episodes = []
    for i, length in enumerate(LENGTHS):
        t = np.arange(length)[:, None]
        episodes.append(
            {
                CAM: make_video(length, seed=100 + i),
                "observation.state": (np.sin(t / 5 + np.arange(6)) + rng.normal(0, 0.1, (length, 6))).astype(
                    np.float32
                ),
                "action": rng.uniform(-1, 1, (length, 4)).astype(np.float32),
            }
        )
    return episodes


def write_dataset(root: Path, episodes: list[dict[str, np.ndarray]], **kwargs) -> None:
    writer = LeRobotWriter(root, fps=FPS, features=features(), robot_type="sawyer", **kwargs)
    for i, ep in enumerate(episodes):
        assert writer.add_episode(ep, task=TASKS[i], extra_episode_meta={"success": i != 1, "seed": 10 + i}) == i
    writer.finalize()


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, np.ndarray]]]:
    root = tmp_path_factory.mktemp("lerobot") / "ds"
    episodes = make_episodes()
    write_dataset(root, episodes)
    return root, episodes


# ---------------------------------------------------------------------------------------------------------------
# Round trip
# ---------------------------------------------------------------------------------------------------------------
def test_round_trip_columns_frames_and_boundaries(written):
    root, episodes = written
    ds = LeRobotDataset(root)
    assert ds.num_episodes == 3 and ds.num_frames == sum(LENGTHS) and ds.fps == FPS
    assert ds.tasks == ["open the drawer", "press the button"]
    assert ds.camera_keys == [CAM]

    start = 0
    for i, (ep, length) in enumerate(zip(episodes, LENGTHS, strict=True)):
        meta = ds.episodes[i]
        assert meta["episode_index"] == i and meta["length"] == length and meta["tasks"] == [TASKS[i]]
        assert (meta["dataset_from_index"], meta["dataset_to_index"]) == (start, start + length)
        assert meta["success"] == (i != 1) and meta["seed"] == 10 + i
        assert ds.episode_task(i) == TASKS[i]

        data = ds.episode_data(i)
        assert CAM not in data
        np.testing.assert_array_equal(data["observation.state"], ep["observation.state"])
        np.testing.assert_array_equal(data["action"], ep["action"])
        assert data["observation.state"].dtype == np.float32
        np.testing.assert_array_equal(data["timestamp"], (np.arange(length) / FPS).astype(np.float32))
        np.testing.assert_array_equal(data["frame_index"], np.arange(length))
        np.testing.assert_array_equal(data["episode_index"], np.full(length, i))
        np.testing.assert_array_equal(data["index"], np.arange(start, start + length))
        np.testing.assert_array_equal(data["task_index"], np.full(length, ds.tasks.index(TASKS[i])))

        # all three episodes share one mp4; each spans [from, to) = its frames' times in that file
        assert meta[f"videos/{CAM}/file_index"] == 0
        assert meta[f"videos/{CAM}/from_timestamp"] == pytest.approx(start / FPS)
        assert meta[f"videos/{CAM}/to_timestamp"] == pytest.approx((start + length) / FPS)
        assert_frames_match(ds.episode_frames(i, CAM), ep[CAM], PSNR_MIN_DB)
        start += length


def test_round_trip_metadata_files_follow_the_v30_spec(written):
    root, _ = written
    info = json.loads((root / "meta/info.json").read_text())
    assert set(info) == {
        "codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks", "chunks_size",
        "data_files_size_in_mb", "video_files_size_in_mb", "fps", "splits", "data_path", "video_path", "features",
    }  # fmt: skip
    assert info["codebase_version"] == "v3.0"
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, sum(LENGTHS), 2)
    assert info["splits"] == {"train": "0:3"} and info["robot_type"] == "sawyer" and info["fps"] == FPS
    assert (info["chunks_size"], info["data_files_size_in_mb"], info["video_files_size_in_mb"]) == (1000, 100, 200)
    assert list(info["features"]) == [
        CAM, "observation.state", "action", "timestamp", "frame_index", "episode_index", "index", "task_index",
    ]  # fmt: skip
    assert info["features"]["timestamp"] == {"dtype": "float32", "shape": [1], "names": None}
    assert info["features"]["observation.state"]["names"] == [f"q{i}" for i in range(6)]
    video_info = info["features"][CAM]["info"]
    assert video_info["video.codec"] == "h264" and video_info["video.pix_fmt"] == "yuv444p"
    assert (video_info["video.height"], video_info["video.width"], video_info["video.fps"]) == (H, W, FPS)
    assert video_info["is_depth_map"] is False and video_info["has_audio"] is False

    data = pq.ParquetFile(root / "data/chunk-000/file-000.parquet")
    assert data.metadata.num_row_groups == 3  # one per episode, like lerobot's writer
    schema = data.schema_arrow
    assert schema.field("observation.state").type == pa.list_(pa.float32(), 6)
    assert schema.field("timestamp").type == pa.float32() and schema.field("index").type == pa.int64()
    assert CAM not in schema.names

    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks.column_names == ["task_index", "task"]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]

    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet")
    stats_cols = [f"stats/{f}/{s}" for f in info["features"] for s in STAT_NAMES]
    assert episodes.column_names == [
        "episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
        "dataset_to_index", f"videos/{CAM}/chunk_index", f"videos/{CAM}/file_index", f"videos/{CAM}/from_timestamp",
        f"videos/{CAM}/to_timestamp", *stats_cols, "meta/episodes/chunk_index", "meta/episodes/file_index",
        "success", "seed",
    ]  # fmt: skip
    assert episodes.schema.field("tasks").type == pa.list_(pa.string())
    assert not (root / "meta/info.json.tmp").exists()


def _numpy_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    out = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": np.array([len(x)])}
    out.update({k: np.quantile(x, q, axis=0) for k, q in QS.items()})
    return out


def test_stats_equal_numpy_over_what_was_written(written):
    root, episodes = written
    ds = LeRobotDataset(root)
    all_frames = {key: np.concatenate([ep[key] for ep in episodes]) for key in episodes[0]}
    expected = {
        "observation.state": _numpy_stats(all_frames["observation.state"].astype(np.float64)),
        "action": _numpy_stats(all_frames["action"].astype(np.float64)),
        "frame_index": _numpy_stats(np.concatenate([np.arange(n) for n in LENGTHS])[:, None].astype(np.float64)),
        "index": _numpy_stats(np.arange(sum(LENGTHS))[:, None].astype(np.float64)),
    }
    for feature, stats in expected.items():
        assert set(ds.stats[feature]) == set(STAT_NAMES)
        for name, value in stats.items():
            np.testing.assert_allclose(ds.stats[feature][name], value, rtol=1e-9, atol=1e-9, err_msg=f"{feature}/{name}")
    assert ds.stats["observation.state"]["mean"].shape == (6,) and ds.stats["frame_index"]["mean"].shape == (1,)

    # images: per channel, shape (3, 1, 1), scaled to [0, 1], count = frames, over the frames before encoding
    pixels = all_frames[CAM].reshape(-1, 3).astype(np.float64) / 255.0  # (T*H*W, 3)
    image_expected = _numpy_stats(pixels)
    image_expected["count"] = np.array([sum(LENGTHS)])
    for name, value in image_expected.items():
        got = ds.stats[CAM][name]
        assert got.shape == ((1,) if name == "count" else (3, 1, 1)), name
        np.testing.assert_allclose(got.reshape(-1), value.reshape(-1), rtol=1e-9, atol=1e-12, err_msg=name)

    # per-episode stats live in the episodes parquet as stats/<feature>/<stat>
    table = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet")
    np.testing.assert_allclose(table.column("stats/action/mean")[1].as_py(), episodes[1]["action"].mean(0), rtol=1e-6)
    np.testing.assert_allclose(
        table.column("stats/action/q99")[2].as_py(), np.quantile(episodes[2]["action"], 0.99, axis=0), rtol=1e-6
    )
    assert table.column(f"stats/{CAM}/count")[0].as_py() == [LENGTHS[0]]


def test_small_file_limits_roll_over_files_and_chunks(tmp_path):
    episodes = make_episodes(seed=1)
    root = tmp_path / "ds"
    write_dataset(root, episodes, data_file_size_mb=1e-6, video_file_size_mb=1e-6, chunks_size=2)
    ds = LeRobotDataset(root)
    locations = [(e["data/chunk_index"], e["data/file_index"]) for e in ds.episodes]
    assert locations == [(0, 0), (0, 1), (1, 0)]
    for i, ep in enumerate(episodes):
        meta = ds.episodes[i]
        chunk, file = locations[i]
        assert (root / DEFAULT_DATA_PATH.format(chunk_index=chunk, file_index=file)).is_file()
        assert (root / DEFAULT_VIDEO_PATH.format(video_key=CAM, chunk_index=chunk, file_index=file)).is_file()
        assert meta[f"videos/{CAM}/from_timestamp"] == 0.0  # first episode of its own file
        np.testing.assert_array_equal(ds.episode_data(i)["action"], ep["action"])
        assert_frames_match(ds.episode_frames(i, CAM), ep[CAM], PSNR_MIN_DB)


def test_image_features_and_per_frame_tasks(tmp_path):
    rng = np.random.default_rng(3)
    feats = {
        "observation.images.wrist": {"dtype": "image", "shape": (12, 16, 3), "names": None},
        "next.success": {"dtype": "bool", "shape": (1,), "names": None},
        **features(False),
    }
    frames = {
        "observation.images.wrist": rng.integers(0, 256, (5, 12, 16, 3), dtype=np.uint8),
        "next.success": np.array([False, False, False, True, True]),
        "observation.state": rng.normal(size=(5, 6)),  # float64: stored as the declared float32
        "action": rng.normal(size=(5, 4)).astype(np.float32),
    }
    with LeRobotWriter(tmp_path / "img", fps=10, features=feats) as writer:
        writer.add_episode(frames, task=["reach", "reach", "grasp", "grasp", "grasp"])
    ds = LeRobotDataset(tmp_path / "img")
    assert ds.camera_keys == ["observation.images.wrist"] and ds.info["video_path"] is None
    np.testing.assert_array_equal(ds.episode_frames(0, "observation.images.wrist"), frames["observation.images.wrist"])
    np.testing.assert_array_equal(ds.episode_data(0)["observation.state"], frames["observation.state"].astype(np.float32))
    np.testing.assert_array_equal(ds.episode_data(0)["task_index"], [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(ds.episode_data(0)["next.success"], frames["next.success"])
    assert ds.stats["next.success"]["mean"] == pytest.approx([0.4])
    assert ds.episodes[0]["tasks"] == ["reach", "grasp"] and ds.episode_task(0) == "reach"
    assert ds.stats["observation.images.wrist"]["mean"].shape == (3, 1, 1)


def test_an_unfinished_write_is_not_a_dataset(tmp_path):
    root = tmp_path / "partial"
    writer = LeRobotWriter(root, fps=FPS, features=features())
    writer.add_episode(make_episodes()[0], task="open the drawer")
    with pytest.raises(RepwamError, match="has no meta/info.json; was `repwam data generate` interrupted"):
        LeRobotDataset(root)
    writer.close()  # files closed, still no info.json
    assert not (root / "meta/info.json").exists()

    with pytest.raises(RuntimeError), LeRobotWriter(tmp_path / "crash", fps=FPS, features=features()) as w:
        w.add_episode(make_episodes()[0], task="open the drawer")
        raise RuntimeError("simulated crash")
    assert not (tmp_path / "crash/meta/info.json").exists()
    with pytest.raises(RepwamError, match="interrupted"):
        LeRobotDataset(tmp_path / "crash")


# ---------------------------------------------------------------------------------------------------------------
# A dataset laid out the way lerobot's own writer lays it out, built by hand (no LeRobotWriter)
# ---------------------------------------------------------------------------------------------------------------
def _encode_episode_like_lerobot(frames: np.ndarray, path: Path, fps: int) -> None:
    """lerobot's default RGB encoder: SVT-AV1, yuv420p, g=2, crf=30, preset 12, one mp4 per episode."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libsvtav1", fps, options={"g": "2", "crf": "30", "preset": "12"})
        stream.pix_fmt = "yuv420p"
        stream.height, stream.width = frames.shape[1:3]
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _duration_s(path: Path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return float(stream.duration * stream.time_base)


def _concatenate_like_lerobot(parts: list[Path], output: Path, tmp: Path) -> None:
    """Stream-copy concatenation through ffmpeg's concat demuxer, as lerobot appends an episode to a file."""
    listing = tmp / "list.ffconcat"
    listing.write_text("ffconcat version 1.0\n" + "".join(f"file '{p.resolve()}'\n" for p in parts))
    output.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(listing), "r", format="concat", options={"safe": "0"}) as src:
        with av.open(str(output), "w", options={"movflags": "faststart"}) as dst:
            in_stream = src.streams.video[0]
            out_stream = dst.add_stream_from_template(template=in_stream, opaque=True)
            out_stream.time_base = in_stream.time_base
            for packet in src.demux(in_stream):
                if packet.dts is None:
                    continue
                packet.stream = out_stream
                dst.mux(packet)


def test_reads_a_dataset_laid_out_by_lerobot(tmp_path):
    root = tmp_path / "lerobot_ds"
    fps, h, w = 30, 64, 96
    cam = "observation.images.laptop"
    lengths = [12, 9, 14]
    tasks = ["Pick up the cube", "Push the T"]
    ep_tasks = [0, 1, 0]
    rng = np.random.default_rng(7)
    videos = [make_video(n, seed=50 + i, h=h, w=w) for i, n in enumerate(lengths)]
    actions = [rng.normal(size=(n, 6)).astype(np.float32) for n in lengths]
    states = [rng.normal(size=(n, 6)).astype(np.float32) for n in lengths]
    # episodes 0 and 1 share data/video file-000; episode 2 went to file-001 (its file filled up)
    location = [(0, 0), (0, 0), (0, 1)]

    motor = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
    video_info = {
        "video.height": h, "video.width": w, "video.codec": "av1", "video.pix_fmt": "yuv420p", "video.fps": fps,
        "video.channels": 3, "video.g": 2, "video.crf": 30, "video.preset": 12, "video.fast_decode": 0,
        "video.video_backend": "pyav", "video.extra_options": {}, "is_depth_map": False, "has_audio": False,
    }  # fmt: skip
    feats = {
        "action": {"dtype": "float32", "shape": [6], "names": motor},
        "observation.state": {"dtype": "float32", "shape": [6], "names": motor},
        cam: {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"], "info": video_info},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }

    # videos: one mp4 per episode, appended to the current file by concatenation; from_timestamp = file duration so far
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    per_episode = []
    for i, frames in enumerate(videos):
        part = tmp / f"{cam}_{i:03d}.mp4"
        _encode_episode_like_lerobot(frames, part, fps)
        per_episode.append(part)
    video_rows = []
    for file_index, members in [(0, [0, 1]), (1, [2])]:
        offset = 0.0
        for i in members:
            duration = _duration_s(per_episode[i])
            video_rows.append((i, file_index, offset, offset + duration))
            offset += duration
        _concatenate_like_lerobot(
            [per_episode[i] for i in members],
            root / f"videos/{cam}/chunk-000/file-{file_index:03d}.mp4",
            tmp,
        )
    video_rows.sort()

    # data: one row group per episode, scalar columns for (1,) features, fixed-size lists for vectors
    schema = pa.schema(
        [("action", pa.list_(pa.float32(), 6)), ("observation.state", pa.list_(pa.float32(), 6)),
         ("timestamp", pa.float32()), ("frame_index", pa.int64()), ("episode_index", pa.int64()),
         ("index", pa.int64()), ("task_index", pa.int64())]
    )  # fmt: skip
    writers: dict[int, pq.ParquetWriter] = {}
    start = 0
    for i, n in enumerate(lengths):
        file_index = location[i][1]
        if file_index not in writers:
            path = root / f"data/chunk-000/file-{file_index:03d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            writers[file_index] = pq.ParquetWriter(path, schema)
        table = pa.table(
            {
                "action": pa.FixedSizeListArray.from_arrays(pa.array(actions[i].ravel()), 6),
                "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(states[i].ravel()), 6),
                "timestamp": pa.array(np.arange(n, dtype=np.float32) / fps),
                "frame_index": pa.array(np.arange(n)),
                "episode_index": pa.array(np.full(n, i)),
                "index": pa.array(np.arange(start, start + n)),
                "task_index": pa.array(np.full(n, ep_tasks[i])),
            },
            schema=schema,
        )
        writers[file_index].write_table(table)
        start += n
    for writer in writers.values():
        writer.close()

    # meta/tasks.parquet: pandas DataFrame(task_index) indexed by task -> columns task_index, task
    (root / "meta").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"task_index": pa.array([0, 1]), "task": pa.array(tasks)}), root / "meta/tasks.parquet")

    # meta/episodes: one row per episode, stats flattened as stats/<feature>/<stat>
    def lr_stats(x: np.ndarray) -> dict[str, list]:
        return {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(),
                "std": x.std(0).tolist(), "count": [len(x)],
                **{k: np.quantile(x, q, axis=0).tolist() for k, q in QS.items()}}  # fmt: skip

    rows = []
    start = 0
    for i, n in enumerate(lengths):
        row = {
            "episode_index": i, "tasks": [tasks[ep_tasks[i]]], "length": n,
            "data/chunk_index": 0, "data/file_index": location[i][1],
            "dataset_from_index": start, "dataset_to_index": start + n,
            f"videos/{cam}/chunk_index": 0, f"videos/{cam}/file_index": video_rows[i][1],
            f"videos/{cam}/from_timestamp": video_rows[i][2], f"videos/{cam}/to_timestamp": video_rows[i][3],
        }  # fmt: skip
        for key, values in (("action", actions[i]), ("observation.state", states[i])):
            row.update({f"stats/{key}/{k}": v for k, v in lr_stats(values.astype(np.float64)).items()})
        image = lr_stats(videos[i].reshape(-1, 3) / 255.0)
        row.update({f"stats/{cam}/{k}": (v if k == "count" else np.reshape(v, (3, 1, 1)).tolist()) for k, v in image.items()})
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        rows.append(row)
        start += n
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "meta/episodes/chunk-000/file-000.parquet")

    all_actions = np.concatenate(actions).astype(np.float64)
    all_pixels = np.concatenate(videos).reshape(-1, 3) / 255.0
    image_stats = {k: (v if k == "count" else np.reshape(v, (3, 1, 1)).tolist()) for k, v in lr_stats(all_pixels).items()}
    (root / "meta/stats.json").write_text(json.dumps({"action": lr_stats(all_actions), cam: image_stats}, indent=4))

    info = {  # lerobot's DatasetInfo.to_dict() keys and order
        "codebase_version": "v3.0", "fps": fps, "features": feats,
        "total_episodes": 3, "total_frames": sum(lengths), "total_tasks": 2,
        "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200,
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "robot_type": "so100", "splits": {"train": "0:3"},
    }  # fmt: skip
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    shutil.rmtree(tmp)

    ds = LeRobotDataset(root)
    assert ds.num_episodes == 3 and ds.num_frames == sum(lengths) and ds.tasks == tasks
    assert ds.camera_keys == [cam] and ds.features[cam]["shape"] == (h, w, 3)
    assert ds.stats[cam]["mean"].shape == (3, 1, 1) and ds.stats["action"]["q99"].shape == (6,)
    assert ds.episodes[1][f"videos/{cam}/from_timestamp"] > 0  # second episode of a concatenated file
    for i in range(3):
        data = ds.episode_data(i)
        np.testing.assert_array_equal(data["action"], actions[i])
        np.testing.assert_array_equal(data["observation.state"], states[i])
        np.testing.assert_array_equal(data["index"], np.arange(rows[i]["dataset_from_index"], rows[i]["dataset_to_index"]))
        assert ds.episode_task(i) == tasks[ep_tasks[i]]
        assert_frames_match(ds.episode_frames(i, cam), videos[i], PSNR_MIN_DB_AV1)


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture()
def copy_of(written, tmp_path) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(written[0], root)
    return root


def test_missing_directory_and_info_json(tmp_path, copy_of):
    with pytest.raises(RepwamError, match="does not exist"):
        LeRobotDataset(tmp_path / "nowhere")
    (copy_of / "meta/info.json").unlink()
    with pytest.raises(RepwamError) as err:
        LeRobotDataset(copy_of)
    assert str(err.value) == (
        f"not a complete LeRobot v3.0 dataset: {copy_of} has no meta/info.json; "
        "was `repwam data generate` interrupted?"
    )


def test_wrong_codebase_version(copy_of):
    info = json.loads((copy_of / "meta/info.json").read_text())
    info["codebase_version"] = "v2.1"
    (copy_of / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(RepwamError, match=r"codebase_version 'v2.1'.*only v3.0"):
        LeRobotDataset(copy_of)


@pytest.mark.parametrize("relpath", ["data/chunk-000/file-000.parquet", "meta/episodes/chunk-000/file-000.parquet"])
def test_corrupt_parquet_is_named(copy_of, relpath):
    (copy_of / relpath).write_bytes(b"PAR1 definitely not parquet")
    with pytest.raises(RepwamError, match=f"{relpath}.*corrupt parquet"):
        LeRobotDataset(copy_of)


def test_missing_or_corrupt_mp4_is_named(copy_of):
    mp4 = copy_of / f"videos/{CAM}/chunk-000/file-000.mp4"
    good = mp4.read_bytes()
    mp4.unlink()
    with pytest.raises(RepwamError, match=f"missing video file .*videos/{CAM}/chunk-000/file-000.mp4"):
        LeRobotDataset(copy_of)
    mp4.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    with pytest.raises(RepwamError, match=f"videos/{CAM}/chunk-000/file-000.mp4 .*corrupt mp4"):
        LeRobotDataset(copy_of)
    mp4.write_bytes(good[: len(good) * 2 // 3])  # truncated: header intact (faststart), last frames gone
    ds = LeRobotDataset(copy_of)
    with pytest.raises(RepwamError, match=f"videos/{CAM}/chunk-000/file-000.mp4.*episode 2"):
        ds.episode_frames(2, CAM)


def test_add_episode_validates_features(tmp_path):
    writer = LeRobotWriter(tmp_path / "ds", fps=FPS, features=features())
    good = make_episodes()[0]
    bad_shape = {**good, "action": np.zeros((LENGTHS[0], 5), np.float32)}
    with pytest.raises(RepwamError, match=r"'action': expected shape \(T, 4\), got \(23, 5\)"):
        writer.add_episode(bad_shape, task="x")
    with pytest.raises(RepwamError, match=rf"'{CAM}': expected frames of shape \(T, 64, 64, 3\), got \(23, 32, 32, 3\)"):
        writer.add_episode({**good, CAM: good[CAM][:, :32, :32]}, task="x")
    with pytest.raises(RepwamError, match=f"'{CAM}': frames must be uint8, got float32"):
        writer.add_episode({**good, CAM: good[CAM].astype(np.float32)}, task="x")
    with pytest.raises(RepwamError, match=r"missing \['action'\], unexpected \['reward'\]"):
        writer.add_episode({CAM: good[CAM], "observation.state": good["observation.state"], "reward": good["action"]}, "x")
    with pytest.raises(RepwamError, match="'action' has 5 frames"):
        writer.add_episode({**good, "action": good["action"][:5]}, task="x")
    with pytest.raises(RepwamError, match="'action' has a non-finite value .* at frame 3"):
        action = good["action"].copy()
        action[3, 1] = np.nan
        writer.add_episode({**good, "action": action}, task="x")
    with pytest.raises(RepwamError, match="'frame_index'"):
        writer.add_episode({**good, "frame_index": np.arange(LENGTHS[0])}, task="x")
    with pytest.raises(RepwamError, match="extra episode column 'length' collides"):
        writer.add_episode(good, task="x", extra_episode_meta={"length": 3})
    with pytest.raises(RepwamError, match="one per frame"):
        writer.add_episode(good, task=["a", "b"])
    assert writer.add_episode(good, task="x") == 0  # nothing above was half-written
    writer.finalize()
    assert LeRobotDataset(tmp_path / "ds").num_frames == LENGTHS[0]
    with pytest.raises(RepwamError, match="already finalized"):
        writer.add_episode(good, task="x")


def test_bad_feature_specs_are_refused(tmp_path):
    with pytest.raises(RepwamError, match="'a/b' contains '/'"):
        LeRobotWriter(tmp_path / "a", fps=10, features={"a/b": {"dtype": "float32", "shape": (2,)}})
    with pytest.raises(RepwamError, match="'timestamp' is added automatically"):
        LeRobotWriter(tmp_path / "b", fps=10, features={"timestamp": {"dtype": "float32", "shape": (1,)}})
    with pytest.raises(RepwamError, match=r"needs shape \(height, width, 3\)"):
        LeRobotWriter(tmp_path / "c", fps=10, features={CAM: {"dtype": "video", "shape": (3, 64, 64)}})


def test_output_directory_must_be_empty_and_writable(tmp_path, copy_of):
    with pytest.raises(RepwamError, match=f"output directory {copy_of} is not empty.*overwrite=True"):
        LeRobotWriter(copy_of, fps=FPS, features=features())
    LeRobotWriter(copy_of, fps=FPS, features=features(), overwrite=True)  # a previous dataset: replaced
    assert not any(copy_of.iterdir())

    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(RepwamError, match=r"refusing to overwrite .*home.*thesis.tex"):
        LeRobotWriter(foreign, fps=FPS, features=features(), overwrite=True)
    assert (foreign / "thesis.tex").exists()

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(RepwamError, match=f"cannot write the dataset to {blocker}/ds"):
        LeRobotWriter(blocker / "ds", fps=FPS, features=features())
