"""The report of `bench/gpu_check.py`: checks run one by one, each ok / FAILED / skipped with its figure."""
import json
import time
import traceback
from pathlib import Path

import torch


class Skip(Exception):
    "Raised by a check that cannot run here; its message says why (e.g. 'no CUDA')."


class Report:
    "Runs checks, prints one line each, and writes `report.json` and `report.md` into `out` after every check."
    def __init__(self, out: Path, device: torch.device, argv: list):
        self.out, self.device, self.argv, self.t0 = Path(out), device, argv, time.time()
        self.checks = []
        self.out.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, fn) -> dict:
        "Run check `fn() -> (figure, detail)`; an exception fails it, `Skip` skips it. Returns the detail."
        t0 = time.perf_counter()
        try:
            figure, detail = fn()
            status = 'ok'
        except Skip as s:
            status, figure, detail = 'skipped', str(s), {}
        except Exception as e:   # a failed check is reported, and the next one still runs
            first = (str(e).strip().splitlines() or [''])[0]
            status, figure = 'FAILED', f'{type(e).__name__}: {first[:300]}'
            detail = {'traceback': traceback.format_exc()[-4000:]}
        finally:
            if self.device.type == 'cuda': torch.cuda.empty_cache()
        self.checks.append(dict(name=name, status=status, figure=figure, seconds=round(time.perf_counter() - t0, 2),
                                detail=detail))
        label = 'skipped:' if status == 'skipped' else status
        print(f"{label:9s} {name:58s} {figure}", flush=True)
        self.write()
        return detail

    def counts(self) -> dict:
        return {s: sum(c['status'] == s for c in self.checks) for s in ('ok', 'FAILED', 'skipped')}

    def write(self):
        "Write both files atomically (a run stopped midway leaves the checks done so far)."
        summary = dict(device=str(self.device), argv=self.argv, seconds=round(time.time() - self.t0, 1),
                       counts=self.counts(), checks=self.checks)
        for name, text in (('report.json', json.dumps(summary, indent=1)), ('report.md', self.markdown(summary))):
            tmp = self.out / f'.{name}.tmp'
            tmp.write_text(text)
            tmp.replace(self.out / name)

    def markdown(self, summary: dict) -> str:
        c = summary['counts']
        lines = [f"# cakd gpu-check on {summary['device']}", '',
                 f"{c['ok']} ok, {c['FAILED']} FAILED, {c['skipped']} skipped in {summary['seconds']:.0f} s "
                 f"(`python bench/gpu_check.py {' '.join(summary['argv'])}`).", '',
                 '| check | status | figure | s |', '|---|---|---|---|']
        for k in summary['checks']:
            figure = k['figure'].replace('|', '/')
            lines.append(f"| {k['name']} | {k['status']} | {figure} | {k['seconds']:.1f} |")
        return '\n'.join(lines) + '\n'
