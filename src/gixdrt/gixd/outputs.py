"""``gixdrt detect``'s outputs after a run (serial or ``--cluster``): tracks, the peak table, the gixi-compatible
file, CXI, the hits list and the track plot, from the command's options."""
from __future__ import annotations

import json
import sys

__all__ = ["detect_outputs"]


def detect_outputs(args, out, table, n_frames: int, metadata: dict, gixi, screener, flags):
    """``gixdrt detect``'s outputs after the run: tracks, the peak table, the gixi file, CXI, hits, the track plot.
    Returns (the table as written, summary lines)."""
    from ..io import write_peaks

    datasets = {}
    notes = []
    if args.link:
        from .tracks import DEFAULT_IOU, drop_short_tracks, link_tracks, track_summary

        iou = DEFAULT_IOU if args.link_iou is None else args.link_iou
        min_track = args.min_track or 1
        table = link_tracks(table, iou=iou)
        n_all = len(track_summary(table))
        table = drop_short_tracks(table, min_track)
        summary = track_summary(table)
        datasets["tracks"] = summary.to_records()
        metadata.update(link_iou=iou, min_track=min_track)
        notes.append(f"  tracks: {len(summary)} track(s) (link IoU ≥ {iou}"
                     + (f"; {n_all - len(summary)} shorter than {min_track} frames dropped, their "
                        f"{int((table.track < 0).sum())} peak(s) have track -1" if min_track > 1 else "") + ")")
    frame_flags = None
    if flags is not None:
        from .screening import FrameFlags

        frame_flags = FrameFlags.from_flags(flags)
        datasets["frames"] = frame_flags.to_records()
        metadata["screening"] = screener.config.to_dict()
    write_peaks(out, table, n_frames=n_frames, metadata=metadata, datasets=datasets)
    if gixi is not None:
        gixi.close()
        print(f"gixi-compatible file ({gixi.frames} frame groups) → {gixi.path}", file=sys.stderr)
    if args.cxi:
        from ..io.cxi import write_cxi

        write_cxi(args.cxi, table, n_frames, flags=frame_flags if args.keep_misses is not None else None,
                  attrs={"model": str(args.model), "inputs": json.dumps([str(x) for x in args.inputs])})
        kept = f", {int(frame_flags.keep.sum())} kept frame(s)" if args.keep_misses is not None else ""
        notes.append(f"  cxi: {n_frames} frame(s){kept} → {args.cxi}")
    if frame_flags is not None:
        c = frame_flags.counts()
        if args.hits:
            from .screening import write_hits_list

            write_hits_list(args.hits, frame_flags)
        notes.append(f"  hits: {c['n_hits']} of {c['n_frames']} frame(s) ({screener.config.describe()})"
                     + (f"; {c['n_kept_misses']} of {c['n_misses']} miss(es) kept" if args.keep_misses is not None
                        else "") + (f" → {args.hits}" if args.hits else ""))
    if args.plot_tracks:
        from ..plotting import plot_tracks

        plot_tracks(table, args.plot_tracks)
        notes.append(f"  track plot → {args.plot_tracks}")
    return table, notes
