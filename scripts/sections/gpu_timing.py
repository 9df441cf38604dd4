"""Training and the 21x21 plane on the CPU and on the device, and one fusion on both compared weight by weight."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd

from sections.common import ROOT
from sections.tables import md_table


def section(run, quick: bool) -> str:
    """Training and the 21x21 plane on the CPU and on the device, in the same process tree."""
    import torch

    rows = []
    for device in dict.fromkeys(["cpu", run.args.device]):
        store = f"store_dir={run.runs / f'timing_{device}'}"
        cmd = ["train", "dataset=mnist_small", "model=mlp", f"train.epochs={2 if quick else 20}", "seeds=[0]", store]
        run.args.device, saved = device, run.args.device
        timed = run(*cmd) / "seconds.txt"  # absent in a runs folder from before the timings were kept
        train_s = float(timed.read_text()) if timed.is_file() else float("nan")
        run.args.device = saved
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}  # fusionctl not installed
        bench = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_landscape.py"), "--device", device] + (["--grid", "5"] if quick else []),
                               cwd=ROOT, capture_output=True, text=True, check=True, env=env).stdout
        plane = next(line for line in bench.splitlines() if line.startswith("(b)"))
        ratio = next(line for line in bench.splitlines() if line.startswith("ratio"))
        rows.append({"device": device, "train 1 MLP, 20 epochs (s, incl. start-up)": round(train_s, 1),
                     "21x21 plane": plane.split(":", 1)[1].strip(), "plane / raw forward": ratio.split(":", 1)[1].split("(")[0].strip()})
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return "\n\n".join(["## Timing: CPU and GPU", f"MLP 784-400-200-100-10 on mnist_small; GPU: {name}; CPU: {os.cpu_count()} cores of the same machine.",
                         md_table(pd.DataFrame(rows)),
                         f"The same fusion of the same two CPU-trained models, run with device=cpu and device={run.args.device} "
                         "(costs, Sinkhorn and the barycenter updates run on the device; exact assignments solve on the CPU either way):",
                         md_table(device_agreement(run, quick), floatfmt="{:.3g}")])


def device_agreement(run, quick: bool) -> pd.DataFrame:
    import torch

    device = run.args.device
    base = ["dataset=mnist_small", "model=mlp", f"train.epochs={1 if quick else 5}", "seeds=[0,1]", "baselines=[]"]
    run.args.device = "cpu"
    run("train", *base[:-1])
    rows = []
    for label, solver in (("wb exact", ["solver.ot=exact"]), ("wb sinkhorn", ["solver.ot=sinkhorn", "solver.reg=0.05"])):
        out = {}
        for dev in ("cpu", device):
            run.args.device = dev
            folder = run("fuse", *base, "solver=wb", *solver)
            table = pd.read_csv(folder / "fusion.csv")
            acc = table[(table.method == "wb") & (table.split == "test")]["accuracy"].iloc[0] * 100
            out[dev] = (torch.load(folder / "fused_wb.pt", weights_only=True)["state_dict"], acc)
        diff = max(float((out["cpu"][0][k] - out[device][0][k]).abs().max()) for k in out["cpu"][0])
        rows.append({"fusion": label, "test acc cpu (%)": out["cpu"][1], f"test acc {device} (%)": out[device][1], "max abs weight difference": diff})
    run.args.device = device
    return pd.DataFrame(rows)
