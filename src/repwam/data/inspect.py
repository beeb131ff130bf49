"""`repwam data info` and `repwam data view`: look at a LeRobot v3.0 dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from repwam.data.lerobot import LeRobotDataset, camera_key
from repwam.errors import RepwamError


def dataset_info(root: str | Path) -> dict:
    """Episodes, frames, tasks (with episode and success counts) and feature shapes."""
    ds = LeRobotDataset(root)
    tasks: dict[str, dict[str, int]] = {}
    for e, ep in enumerate(ds.episodes):
        t = tasks.setdefault(ds.episode_task(e), {"episodes": 0, "frames": 0, "successes": 0})
        t["episodes"] += 1
        t["frames"] += int(ep["length"])
        t["successes"] += int(bool(ep.get("success", False)))
    info = {
        "root": str(ds.root),
        "codebase_version": ds.info.get("codebase_version"),
        "robot_type": ds.info.get("robot_type"),
        "fps": ds.fps,
        "episodes": ds.num_episodes,
        "frames": ds.num_frames,
        "features": {k: {"dtype": v["dtype"], "shape": list(v["shape"])} for k, v in ds.features.items()},
        "tasks": tasks,
    }
    gen = ds.root / "meta" / "repwam_generation.json"
    if gen.exists():
        report = json.loads(gen.read_text())
        info["expert_failures"] = report.get("expert_failures")
    return info


def format_info(info: dict) -> str:
    lines = [
        f"{info['root']}  (LeRobot {info['codebase_version']}, robot {info['robot_type']}, {info['fps']} fps)",
        f"episodes {info['episodes']}, frames {info['frames']}",
    ]
    if info.get("expert_failures") is not None:
        lines.append(f"expert failures discarded while generating: {info['expert_failures']}")
    lines.append("features:")
    for k, v in info["features"].items():
        lines.append(f"  {k:40s} {v['dtype']:8s} {tuple(v['shape'])}")
    lines.append(f"tasks ({len(info['tasks'])}):")
    width = max((len(t) for t in info["tasks"]), default=10)
    for t, c in info["tasks"].items():
        lines.append(f"  {t:{width}s}  episodes {c['episodes']:4d}  frames {c['frames']:6d}  successes {c['successes']}")
    return "\n".join(lines)


def annotate(frames: np.ndarray, text: str, scale: int = 4) -> np.ndarray:
    """Upscale (T, H, W, 3) frames `scale` times and write `text` in a bar under them."""
    from PIL import Image, ImageDraw, ImageFont

    T, H, W, _ = frames.shape
    big = frames.repeat(scale, 1).repeat(scale, 2)
    font = ImageFont.load_default()
    # wrap the instruction to the frame width
    words, lines, line = text.split(), [], ""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for w in words:
        cand = f"{line} {w}".strip()
        if probe.textlength(cand, font=font) > W * scale - 8 and line:
            lines.append(line)
            line = w
        else:
            line = cand
    lines.append(line)
    bar_h = 14 * len(lines) + 6
    out = np.zeros((T, H * scale + bar_h, W * scale, 3), np.uint8)
    bar = Image.new("RGB", (W * scale, bar_h), (0, 0, 0))
    draw = ImageDraw.Draw(bar)
    for i, ln in enumerate(lines):
        draw.text((4, 3 + 14 * i), ln, fill=(255, 255, 255), font=font)
    out[:, : H * scale] = big
    out[:, H * scale :] = np.asarray(bar)
    return out


def write_video(frames: np.ndarray, path: str | Path, fps: int) -> Path:
    """(T, H, W, 3) uint8 to .mp4 (PyAV, h264) or .gif (Pillow)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RepwamError(f"cannot create {path.parent}: {e.strerror}") from None
    if path.suffix == ".gif":
        from PIL import Image

        imgs = [Image.fromarray(f) for f in frames]
        imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)
    elif path.suffix == ".mp4":
        import av

        h, w = frames.shape[1:3]
        frames = frames[:, : h - h % 2, : w - w % 2]  # yuv420p needs even sizes
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            for f in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    else:
        raise RepwamError(f"output must end in .mp4 or .gif, got {path}")
    return path


def view_episode(root: str | Path, episode: int, out: str | Path | None = None, camera: str | None = None) -> Path:
    ds = LeRobotDataset(root)
    if not 0 <= episode < ds.num_episodes:
        raise RepwamError(f"episode {episode} does not exist: {ds.root} has episodes 0..{ds.num_episodes - 1}")
    key = camera_key(camera or ds.camera_keys[0])
    if key not in ds.camera_keys:
        raise RepwamError(f"no camera {key!r} in {ds.root}; cameras: {ds.camera_keys}")
    frames = annotate(ds.episode_frames(episode, key), f"ep {episode}: {ds.episode_task(episode)}")
    out = Path(out) if out else ds.root / "views" / f"episode_{episode:06d}.mp4"
    return write_video(frames, out, ds.fps)


def video_only(src_root: str | Path, dst: str | Path) -> Path:
    """A copy of a dataset with its camera videos, task texts and layout seeds only: no action, state or simulator
    columns (action-free video, as a world action model can pretrain on)."""
    from repwam.data.lerobot import LeRobotDataset, LeRobotWriter

    src = LeRobotDataset(src_root)
    if Path(dst).exists():
        raise RepwamError(f"{dst} exists; choose another --out")
    cams = src.camera_keys
    w = LeRobotWriter(dst, fps=src.fps, features={c: src.features[c] for c in cams})
    for e in range(src.num_episodes):
        seed = src.episodes[e].get("seed")
        w.add_episode({c: src.episode_frames(e, c) for c in cams}, src.episode_task(e),
                      {"seed": int(seed)} if seed is not None else None)
    w.finalize()
    return Path(dst)
