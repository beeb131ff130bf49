"""Does the video VAE's context window keep whole episodes in distribution? Decoded PSNR by latent-frame index over
whole held-out episodes for one CausalVAE checkpoint, as saved (with its context window) and loaded with
context_window=None (one pass over the whole episode: every convolution sees the real history), plus any other
tokenizer checkpoints for reference.

    python benchmarks/vae_context_window.py --data outputs/abl_demo/data/<tasks> -c <run>/tok_vae/checkpoints/last
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from repwam.eval.tokenizer import format_index_table, plot_psnr_by_index, psnr_by_index

OUT = Path(__file__).parent / "results" / "vae_context_window.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("-c", "--checkpoint", required=True, help="a CausalVAE checkpoint directory")
    ap.add_argument("--reference", action="append", default=[], help="other tokenizer checkpoints to plot beside it")
    ap.add_argument("--max-episodes", type=int, default=None)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--plot", default=None, help="PNG path (default: next to --out)")
    args = ap.parse_args()

    runs = [("window (as saved)", psnr_by_index(args.checkpoint, args.data, max_episodes=args.max_episodes)),
            ("no window (one pass)", psnr_by_index(args.checkpoint, args.data, max_episodes=args.max_episodes,
                                                   overrides={"context_window": None}))]
    runs += [("reference", psnr_by_index(c, args.data, max_episodes=args.max_episodes)) for c in args.reference]
    results = [r for _, r in runs]
    for label, r in runs:
        r["setting"] = label
    print(format_index_table(results))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    plot = Path(args.plot) if args.plot else out.with_suffix(".png")
    for r in results:  # the plot labels by run name: say which setting each VAE line is
        r["teacher"] = f"{r['teacher']}, window {r['attn_window']}"
    plot_psnr_by_index(results, plot)
    print(f"wrote {out} and {plot}")


if __name__ == "__main__":
    main()
