"""Scale run: a store of 1,000 checkpoints x 12 layers x 1 dataset probed end to end, in chunks.

    python bench/scale_run.py --backend cuda --workdir DIR --out OUT [--time-limit 480]
    python bench/scale_run.py --backend cpu --tiny --workdir DIR --out OUT            # smoke test

The store the issue asks for (D = 768, C = 100, 5,000 train and 10,000 test rows per block, fp16)
is 12,000 blocks x 23 MB = 276 GB, more than the GPU machine's 64 GiB disk. So the run goes by
chunks of --chunk checkpoints: generate the chunk's features into its own store (on the GPU with
CuPy when the backend is cuda, else numpy), probe that store end to end with
``plateaulab.run.probe_store`` into the chunk's run directory, delete the chunk's store, next.
Generation, probing and deletion are timed separately; probes/s counts probe time only.

Restartable: ``WORKDIR/ledger.json`` records every finished chunk (timings, counts, peaks) and is
rewritten atomically after each. Re-running the same command skips finished chunks; a chunk that
was interrupted resumes (generation skips complete blocks, probe_store skips blocks whose part file
exists). --time-limit makes a command stop before a chunk it expects not to finish in time, so the
run can be split across commands of a few minutes each. The ledger is also copied to OUT after
every chunk: on a fresh machine, --resume-ledger OUT/ledger.json carries the finished chunks over
(their part files are gone with the old machine; their timings and counts are not).

Every command prints and writes OUT/scale_summary.json: wall (generation + probe + deletion, summed
over chunks and commands), generation, probe and deletion seconds, probes, probes/s, peak host RSS
(getrusage, and the probe phase alone where the kernel lets the mark be reset) and peak GPU memory
(CuPy's pool and the device's used memory, polled during probing). While chunks remain it also gives
the probe time the rest would take at the rate measured so far, labelled as a projection.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_cuda as bc  # noqa: E402

LEDGER_FORMAT = "plateaulab-scale-ledger-1"


def scale_spec(args) -> dict:
    """Everything that decides the run's numbers; a ledger written under another spec is refused."""
    if args.tiny:
        ds, dim, layers = bc.DatasetSpec("bench", 6, 240, 26), 32, 2
    else:
        ds, dim, layers = bc.DatasetSpec("bench", 100, 10_000, 50), 768, 12
    return {"generator": bc.GENERATOR_VERSION, "dataset": ds.__dict__, "dim": dim, "layers": layers,
            "checkpoints": args.checkpoints, "chunk": args.chunk, "shots": [1, 5, 10, 25], "seeds": [0, 1, 2],
            "l2": [1024.0], "backend": args.backend}


def load_ledger(workdir: Path, resume: Path | None, spec: dict) -> dict:
    path = workdir / "ledger.json"
    source = path if path.exists() else resume
    if source is None or not Path(source).exists():
        return {"format": LEDGER_FORMAT, "spec": spec, "chunks": {}, "commands": []}
    ledger = json.loads(Path(source).read_text())
    if ledger.get("spec") != spec:
        raise SystemExit(f"{source} was written for another scale run ({ledger.get('spec')}); "
                         "repeat its options, or use a new --workdir")
    return ledger


def save_ledger(ledger: dict, workdir: Path, out: Path) -> None:
    from plateaulab.store import atomic_write_json

    atomic_write_json(workdir / "ledger.json", ledger)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "ledger.json", ledger)


def run_chunk(idx: int, spec: dict, workdir: Path, backend: str, xp) -> dict:
    """Generate, probe and delete one chunk; its ledger entry."""
    from plateaulab import FeatureStore
    from plateaulab.run import probe_store

    first = idx * spec["chunk"]
    count = min(spec["chunk"], spec["checkpoints"] - first)
    ds = bc.DatasetSpec(**spec["dataset"])
    store_dir = workdir / "stores" / f"chunk-{idx:04d}"
    run_dir = workdir / "runs" / f"chunk-{idx:04d}"
    need = count * spec["layers"] * (ds.classes * ds.train_per_class + ds.n_test) * spec["dim"] * 2
    if need > 0.95 * shutil.disk_usage(workdir).free:
        raise SystemExit(f"chunk {idx} needs {need / 1e9:.1f} GB and {workdir} has "
                         f"{shutil.disk_usage(workdir).free / 1e9:.1f} GB free; lower --chunk or free the disk")

    # Generation: the chunk's checkpoints keep their global numbers (ckpt-0040 ...).
    t0 = time.perf_counter()
    bc.reset_peak_rss()
    st = FeatureStore.create(store_dir, exist_ok=True)
    if ds.name not in st.datasets():
        y_train, y_test = bc.dataset_labels(ds)
        st.add_dataset(ds.name, y_train, y_test, num_classes=ds.classes)
    labels = st.dataset(ds.name)
    jobs = [(f"ckpt-{k:04d}", k, layer, 0, ds.name, labels.y_train, labels.y_test)
            for k in range(first, first + count) for layer in range(spec["layers"])]
    written = bc.write_blocks(st, bc.FeatureSynth(xp, spec["dim"]), jobs)
    gen_s = time.perf_counter() - t0
    gen_rss = bc.peak_rss_bytes()

    # Probing, end to end through a run directory of its own (resumes if a part exists).
    bc.reset_peak_rss()
    with bc.MemoryWatch(xp) as mem:
        t0 = time.perf_counter()
        run = probe_store(st, run_dir, shots=spec["shots"], seeds=spec["seeds"], l2=spec["l2"], backend=backend,
                          quiet=True)
        probe_s = time.perf_counter() - t0
    probe_rss = bc.peak_rss_bytes()
    import pyarrow.parquet as pq

    acc = pq.read_table(run.results_path, columns=["accuracy"]).column("accuracy").to_numpy()
    results_copy = workdir / "results" / f"chunk-{idx:04d}.parquet"
    results_copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run.results_path, results_copy)

    t0 = time.perf_counter()
    shutil.rmtree(store_dir)
    shutil.rmtree(run_dir / "parts", ignore_errors=True)
    delete_s = time.perf_counter() - t0
    return {"checkpoints": [first, first + count - 1], "blocks": run.blocks_total, "probes": int(acc.size),
            "probes_this_attempt": run.probes_done_now, "feature_bytes_generated": written,
            "generation_s": gen_s, "probe_s": probe_s, "delete_s": delete_s,
            "mean_accuracy": float(acc.mean()), "peak_rss_generation_bytes": gen_rss,
            "peak_rss_probe_bytes": probe_rss, **mem.result(),
            "finished": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def warm_up(spec: dict, workdir: Path, backend: str, xp) -> float:
    """One block of the chunk shape through probe_store, untimed: CuPy kernel compilation, cuBLAS and
    cuSOLVER handles and the memory pool stay out of the first chunk's probe time."""
    from plateaulab.run import probe_store

    wl = bc.Workload("warmup", "scale warm-up", (bc.DatasetSpec(**spec["dataset"]),), checkpoints=1, layers=1,
                     probe_layers="all", dim=spec["dim"], shots=tuple(spec["shots"]), seeds=tuple(spec["seeds"]),
                     l2s=tuple(spec["l2"]), store_key="scale-warmup")
    t0 = time.perf_counter()
    st, _, _ = bc.build_store(wl, workdir, xp, quiet=True)
    run_dir = workdir / "runs" / "warmup"
    shutil.rmtree(run_dir, ignore_errors=True)
    probe_store(st, run_dir, shots=spec["shots"], seeds=spec["seeds"], l2=spec["l2"], backend=backend, quiet=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    return time.perf_counter() - t0


def extrapolation(out: dict, spec: dict, target: int) -> dict | None:
    """Probe time of ``target`` checkpoints from the checkpoints probed so far, with its assumption."""
    done = out["checkpoints_done"]
    if not done or not out["probe_s"] or target <= done:
        return None
    per_ckpt = out["probe_s"] / done
    return {"checkpoints": target, "probe_s": per_ckpt * target, "probe_min": per_ckpt * target / 60,
            "note": "NOT MEASURED: extrapolated from the probing time of "
                    f"{done} checkpoints x {spec['layers']} layers",
            "assumption": ("probe time is linear in the number of checkpoints: every block has the same shape "
                           "(D, C, rows, shots, seeds, l2), so it costs the same, and the store streams at the rate "
                           "measured here (chunks just written, so read from the page cache; a store on disk that "
                           "is colder reads slower). Generation and deletion are excluded: a real run probes "
                           "features already extracted.")}


def summarise(ledger: dict, extrapolate_to: int | None = None) -> dict:
    spec, chunks = ledger["spec"], ledger["chunks"]
    n_chunks = -(-spec["checkpoints"] // spec["chunk"])
    done = [chunks[k] for k in sorted(chunks, key=int)]
    tot = {k: sum(c[k] for c in done) for k in ("generation_s", "probe_s", "delete_s", "probes",
                                                 "probes_this_attempt", "feature_bytes_generated", "blocks")}
    wall = tot["generation_s"] + tot["probe_s"] + tot["delete_s"]
    rate = tot["probes_this_attempt"] / tot["probe_s"] if tot["probe_s"] else None
    per_block = spec["layers"] * len(spec["shots"]) * len(spec["seeds"]) * len(spec["l2"])
    planned = spec["checkpoints"] * per_block

    def peak(key):
        values = [c[key] for c in done if c.get(key) is not None]
        return max(values) if values else None

    out = {
        "complete": len(done) == n_chunks, "chunks_done": len(done), "chunks": n_chunks,
        "checkpoints_done": sum(c["checkpoints"][1] - c["checkpoints"][0] + 1 for c in done),
        "checkpoints": spec["checkpoints"], "blocks": tot["blocks"], "probes": tot["probes"],
        "probes_planned": planned, "wall_s": wall, "generation_s": tot["generation_s"], "probe_s": tot["probe_s"],
        "delete_s": tot["delete_s"], "probes_per_s": rate,
        "probes_per_s_incl_generation": tot["probes"] / wall if wall else None,
        "generation_gbps": tot["feature_bytes_generated"] / tot["generation_s"] / 1e9 if tot["generation_s"] else None,
        "feature_bytes_generated": tot["feature_bytes_generated"],
        "peak_rss_bytes": max([c.get("peak_rss_process_bytes", 0) for c in ledger["commands"]] +
                              [peak("peak_rss_generation_bytes") or 0, peak("peak_rss_probe_bytes") or 0]),
        "peak_rss_probe_bytes": peak("peak_rss_probe_bytes"),
        "peak_gpu_pool_bytes": peak("peak_gpu_pool_bytes"), "peak_gpu_used_bytes": peak("peak_gpu_used_bytes"),
        "mean_accuracy": float(np.mean([c["mean_accuracy"] for c in done])) if done else None,
        "spec": spec, "commands": ledger["commands"],
    }
    if extrapolate_to:
        ex = extrapolation(out, spec, extrapolate_to)
        if ex:
            out["extrapolation"] = ex
    if not out["complete"] and rate and done:
        gen_per_ckpt = tot["generation_s"] / out["checkpoints_done"]
        left_ckpts = spec["checkpoints"] - out["checkpoints_done"]
        out["projection"] = {
            "note": "NOT MEASURED: the remaining chunks at the rates measured so far",
            "probe_s_remaining": (planned - tot["probes"]) / rate,
            "generation_s_remaining": gen_per_ckpt * left_ckpts,
            "probe_s_all": planned / rate,
        }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--workdir", default=None, help="chunk stores, runs, ledger (local disk)")
    ap.add_argument("--out", required=True, help="where ledger.json and scale_summary.json are copied")
    ap.add_argument("--checkpoints", type=int, default=None, help="default 1000 (tiny: 4)")
    ap.add_argument("--chunk", type=int, default=None, help="checkpoints per chunk (default 20; tiny: 2)")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="seconds this command may spend; no chunk is started that is expected to end later")
    ap.add_argument("--max-chunks", type=int, default=None, help="finish at most this many chunks in this command")
    ap.add_argument("--resume-ledger", type=Path, default=None,
                    help="a ledger.json from an earlier command (another machine): its chunks count as done")
    ap.add_argument("--tiny", action="store_true", help="a few small checkpoints (smoke test; allows cpu)")
    ap.add_argument("--extrapolate-to", type=int, default=1000,
                    help="also give the probe time of this many checkpoints, extrapolated (labelled as such)")
    args = ap.parse_args(argv)
    if args.backend == "cpu" and not args.tiny:
        ap.error("--backend cpu is for --tiny runs")
    args.checkpoints = args.checkpoints or (4 if args.tiny else 1000)
    args.chunk = args.chunk or (2 if args.tiny else 20)
    default_workdir = os.path.join(tempfile.gettempdir(), "plateaulab-scale" + ("-tiny" if args.tiny else ""))
    workdir = Path(args.workdir or default_workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    start = time.perf_counter()

    spec = scale_spec(args)
    ledger = load_ledger(workdir, args.resume_ledger, spec)
    xp = bc.array_module(args.backend)
    env = bc.environment(args.backend, with_jax=False)
    n_chunks = -(-spec["checkpoints"] // spec["chunk"])
    todo = [i for i in range(n_chunks) if str(i) not in ledger["chunks"]]
    command = {"started": env["date_utc"], "host": platform.node(), "device": env.get("device", {}).get("name"),
               "chunks_done": 0, "warmup_s": None}
    ledger["commands"].append(command)
    if todo:
        command["warmup_s"] = warm_up(spec, workdir, args.backend, xp)
    # Expected seconds of the next chunk: the last one of this command, else of an earlier one.
    last = max((c["generation_s"] + c["probe_s"] + c["delete_s"] for c in ledger["chunks"].values()), default=None)
    for idx in todo:
        if args.max_chunks is not None and command["chunks_done"] >= args.max_chunks:
            break
        elapsed = time.perf_counter() - start
        if args.time_limit and last and elapsed + 1.2 * last > args.time_limit:
            print(f"stopping before chunk {idx}: {elapsed:.0f} s used, a chunk takes {last:.0f} s, "
                  f"limit {args.time_limit:.0f} s; run the same command again to continue", flush=True)
            break
        t0 = time.perf_counter()
        entry = run_chunk(idx, spec, workdir, args.backend, xp)
        last = time.perf_counter() - t0
        ledger["chunks"][str(idx)] = entry
        command["chunks_done"] += 1
        command["peak_rss_process_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        command["seconds"] = time.perf_counter() - start
        save_ledger(ledger, workdir, out)
        print(f"chunk {idx + 1}/{n_chunks}: checkpoints {entry['checkpoints'][0]}-{entry['checkpoints'][1]}, "
              f"generate {entry['generation_s']:.1f} s, probe {entry['probe_s']:.1f} s "
              f"({entry['probes_this_attempt'] / entry['probe_s']:.0f} probes/s), delete {entry['delete_s']:.1f} s",
              flush=True)
    command["seconds"] = time.perf_counter() - start
    command["peak_rss_process_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    save_ledger(ledger, workdir, out)
    summary = {**summarise(ledger, args.extrapolate_to), "env": env}
    if summary["complete"]:
        consolidate(workdir, n_chunks)
    (out / "scale_summary.json").write_text(json.dumps(summary, indent=2, default=bc._json_default))
    argv_shown = " ".join("DIR" if a.startswith("/") else a for a in (argv if argv is not None else sys.argv[1:]))
    (out / "scale.md").write_text(summary_md(summary, "python bench/scale_run.py " + argv_shown))
    brief = {k: summary[k] for k in ("complete", "checkpoints_done", "checkpoints", "probes", "wall_s", "generation_s",
                                     "probe_s", "probes_per_s", "peak_rss_bytes", "peak_gpu_used_bytes")}
    print(json.dumps({**brief, **({"projection": summary["projection"]} if "projection" in summary else {})}, indent=1))
    return 0


def summary_md(s: dict, command: str) -> str:
    """A fragment for bench/RESULTS.md."""
    spec = s["spec"]
    gib = lambda b: "—" if b is None else f"{b / 2 ** 30:.2f} GiB"  # noqa: E731
    state = ("complete" if s["complete"] else
             f"**incomplete: {s['checkpoints_done']:,} of {s['checkpoints']:,} checkpoints** (device time ran out)")
    ds = spec["dataset"]
    out = [f"### Scale run: {spec['checkpoints']:,} checkpoints × {spec['layers']} layers × 1 dataset",
           bc.header_md(s["env"], command).rstrip(),
           f"D = {spec['dim']}, C = {ds['classes']}, {ds['classes'] * ds['train_per_class']:,} train and "
           f"{ds['n_test']:,} test rows, fp16; shots {', '.join(map(str, spec['shots']))}, seeds "
           f"{', '.join(map(str, spec['seeds']))}, l2 {', '.join(f'{v:g}' for v in spec['l2'])}. The full store would "
           f"not fit the disk, so it was generated, probed end to end (`probe_store`) and deleted in chunks of "
           f"{spec['chunk']} checkpoints, over {len(s['commands'])} command(s). Status: {state}.",
           "| | value |\n|---|---|\n"
           f"| checkpoints / blocks / probes done | {s['checkpoints_done']:,} / {s['blocks']:,} / {s['probes']:,} |\n"
           f"| wall (generation + probing + deletion) | {s['wall_s']:.1f} s |\n"
           f"| generation ({'GPU' if spec['backend'] == 'cuda' else 'numpy'} draws, fp16 store writes) | "
           f"{s['generation_s']:.1f} s "
           f"({(s['generation_gbps'] or 0):.2f} GB/s of features) |\n"
           f"| probing, end to end | {s['probe_s']:.1f} s |\n"
           f"| deletion | {s['delete_s']:.1f} s |\n"
           f"| **probes/s** (probing time) | **{(s['probes_per_s'] or 0):,.0f}** |\n"
           f"| probes/s including generation | {(s['probes_per_s_incl_generation'] or 0):,.0f} |\n"
           f"| peak host RSS (process; probe phase) | {gib(s['peak_rss_bytes'])}; {gib(s['peak_rss_probe_bytes'])} |\n"
           f"| peak GPU memory (device used; CuPy pool) | {gib(s['peak_gpu_used_bytes'])}; "
           f"{gib(s['peak_gpu_pool_bytes'])} |"]
    if "extrapolation" in s:
        x = s["extrapolation"]
        out.append(f"Extrapolation, NOT measured: {x['checkpoints']:,} checkpoints would probe in {x['probe_s']:.0f} s "
                   f"({x['probe_min']:.1f} min). Assumption: {x['assumption']}")
    if "projection" in s:
        p = s["projection"]
        out.append(f"Projection, NOT measured: the remaining {s['checkpoints'] - s['checkpoints_done']:,} checkpoints "
                   f"would take {p['probe_s_remaining']:.0f} s of probing and {p['generation_s_remaining']:.0f} s of "
                   f"generation at the rates above; all {s['checkpoints']:,} would probe in {p['probe_s_all']:.0f} s.")
    return "\n\n".join(out) + "\n"


def consolidate(workdir: Path, n_chunks: int) -> None:
    """All chunks' results in one table, WORKDIR/results.parquet, streamed chunk by chunk (only the
    chunks whose results this machine still holds; a resumed ledger's older chunks are not)."""
    import pyarrow.parquet as pq

    parts = [workdir / "results" / f"chunk-{i:04d}.parquet" for i in range(n_chunks)]
    parts = [p for p in parts if p.exists()]
    if not parts:
        return
    with pq.ParquetWriter(workdir / "results.parquet", pq.read_schema(parts[0])) as w:
        for p in parts:
            w.write_table(pq.read_table(p))


if __name__ == "__main__":
    sys.exit(main())
