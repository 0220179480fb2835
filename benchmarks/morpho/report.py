"""Statistics and outputs: mean +- sd over seeds per arm, paired per-seed differences
against Esper (wins / losses), the JSON record, the Markdown table and the plot of test
accuracy against training FLOPs."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np

from .arms import ARMS, FITTED_LABEL, LABELS, LONGER, MATCHED, spacing_of
from .loop import LEARNING_RATE

# The suffix of a row read at Esper's FLOPs (see MATCHED).
AT_ESPER = "@esper-flops"
# What the esper arm ran with, and the value a result from before the setting existed had:
# runs of Esper under other settings are another Esper, whose table would be mislabelled
# (its row says the settings that are not these), and the controls that follow Esper's
# run follow the run they were given (cli.config_mismatch).
ESPER_SETTINGS = {"flops_weight": None, "slot_depth": 1, "seed_param_fraction": 1.0, "seed_init": "default",
                  "seed_lr": "follow", "width_growth": False, "heuristic": None,
                  "training_flops_budget": None, "budget_flops_weight": None}


def esper_setting(cfg: dict, key: str):
    """One of ESPER_SETTINGS as a result's config has it."""
    return cfg.get(key, ESPER_SETTINGS[key])


def _mean_sd(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def rows(runs: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Per-seed rows of every arm, the FLOP-matched rows derived from their source runs
    included (test accuracy and FLOPs at the point the run reached Esper's FLOPs)."""
    out = {arm: [{"seed": r["seed"], "test_accuracy": r["test_accuracy"],
                  "val_accuracy": r.get("val_accuracy", math.nan),
                  "test_loss": r.get("test_loss", math.nan),
                  "flops": r["flops"]["total"], "params": r["params"], "wall_s": r["wall_s"]}
                 for r in rs] for arm, rs in runs.items()}
    spaced = {f"{arm}{AT_ESPER}": arm for arm in runs if spacing_of(arm)}
    for derived, source in {**MATCHED, **spaced}.items():
        if source in runs:
            out[derived] = [{"seed": r["seed"], "test_accuracy": r["milestones"]["esper-flops"]["test_accuracy"],
                             "val_accuracy": math.nan, "test_loss": math.nan,
                             "flops": r["milestones"]["esper-flops"]["flops"], "params": r["params"],
                             "wall_s": math.nan}
                            for r in runs[source] if "esper-flops" in r.get("milestones", {})]
    return out


def aggregate(per_seed: list[dict]) -> dict:
    acc = _mean_sd([r["test_accuracy"] for r in per_seed])
    flops = _mean_sd([r["flops"] for r in per_seed])
    return {"seeds": len(per_seed), "test_accuracy_mean": acc[0], "test_accuracy_sd": acc[1],
            "flops_mean": flops[0], "flops_sd": flops[1],
            "params_mean": _mean_sd([r["params"] for r in per_seed])[0],
            # bits per target of the test loss (bits per character for the text host)
            "test_bits_mean": _mean_sd([r["test_loss"] / math.log(2) for r in per_seed
                                        if math.isfinite(r.get("test_loss", math.nan))])[0],
            "wall_s_mean": _mean_sd([r["wall_s"] for r in per_seed if math.isfinite(r["wall_s"])])[0]}


def paired(esper: list[dict], other: list[dict]) -> dict:
    """Esper minus the arm, per seed (test accuracy, percentage points; FLOP ratio)."""
    by_seed = {r["seed"]: r for r in other}
    pairs = [(e, by_seed[e["seed"]]) for e in esper if e["seed"] in by_seed]
    diffs = [100 * (e["test_accuracy"] - o["test_accuracy"]) for e, o in pairs]
    ratios = [e["flops"] / o["flops"] for e, o in pairs if o["flops"] > 0]
    mean, sd = _mean_sd(diffs)
    return {"pairs": len(pairs), "esper_minus_arm_pp_mean": mean, "esper_minus_arm_pp_sd": sd,
            "esper_wins": sum(d > 0 for d in diffs), "esper_losses": sum(d < 0 for d in diffs),
            "ties": sum(d == 0 for d in diffs),
            "esper_flops_over_arm": _mean_sd(ratios)[0], "diffs_pp": diffs}


def best_schedule(per: dict[str, list[dict]]) -> dict | None:
    """The fixed schedule Esper is compared with: of the spacings run (schedule-every-N),
    the one with the best mean validation accuracy over its seeds (the test set chooses
    nothing). None when no spacing ran (results from before the search hold one "schedule"
    arm, which is then the comparison)."""
    val = {arm: statistics.fmean(r["val_accuracy"] for r in rs)
           for arm, rs in per.items() if spacing_of(arm) and rs}
    if not val:
        return None
    return {"arm": max(val, key=val.get), "val_accuracy_mean": val}


def summarise(runs: dict[str, list[dict]]) -> dict:
    per = rows(runs)
    chosen = best_schedule(per)
    if chosen is not None:
        per["schedule"] = per[chosen["arm"]]
        chosen["fitted"] = any(r.get("milestones", {}).get("esper-flops", {}).get("fitted_run")
                               for r in runs[chosen["arm"]])
        if chosen["fitted"]:
            per["schedule" + AT_ESPER] = per[chosen["arm"] + AT_ESPER]
    arms = {arm: aggregate(rs) for arm, rs in per.items() if rs}
    pair = {arm: paired(per["esper"], rs) for arm, rs in per.items()
            if arm != "esper" and "esper" in per and rs}
    return {"arms": arms, "paired_vs_esper": pair, "best_schedule": chosen}


def targets(summary: dict) -> list[tuple[str, str, bool | None]]:
    """Issue 13's targets for one host: (target, what was measured, met? None = no data)."""
    arms, pair = summary["arms"], summary["paired_vs_esper"]
    out = []

    def beats(arm: str, label: str) -> None:
        p = pair.get(arm)
        if p is None:
            out.append((label, "not run", None))
            return
        ok = p["esper_minus_arm_pp_mean"] > 0 and p["esper_wins"] >= 2 * p["esper_losses"]
        out.append((label, f"{p['esper_minus_arm_pp_mean']:+.2f} pp, wins/losses "
                           f"{p['esper_wins']}/{p['esper_losses']}", ok))

    beats("static-final-size@esper-flops", "Esper > static of its final size, at matched FLOPs")
    beats("esper-arch-static@esper-flops", "Esper > its own final architecture trained static, at matched FLOPs")
    if "esper-arch-restarts@esper-flops" in pair:  # only where Esper widened a stream
        beats("esper-arch-restarts@esper-flops", "  and with Adam restarted where Esper widened, at matched FLOPs")
    for arm in ("static-final-size", "esper-arch-static"):
        if arm in arms and "esper" in arms:
            ratio = arms["esper"]["flops_mean"] / arms[arm]["flops_mean"]
            p = pair.get(arm)
            ok = ratio <= 0.7 and p is not None and p["esper_minus_arm_pp_mean"] >= 0
            out.append((f"or: Esper's accuracy ≥ {arm}'s (full run) with ≤ 70% of its FLOPs",
                        f"{100 * ratio:.0f}% of its FLOPs, {p['esper_minus_arm_pp_mean']:+.2f} pp", ok))
    beats("random", "Esper > random growth")
    target = _schedule_target(summary.get("best_schedule"))
    beats("schedule", target)
    if "schedule" + AT_ESPER in pair:  # where it spent more than Esper: a second, annealed run
        beats("schedule" + AT_ESPER, f"  {target.replace('Esper > ', '')}, at matched FLOPs")
    if "gromo" in pair and "esper" in arms:
        out.append(_gromo_target(arms, pair))
    if "learned" in pair:
        p = pair["learned"]
        out.append(("learned policy ≥ heuristic", f"{-p['esper_minus_arm_pp_mean']:+.2f} pp "
                    f"(learned − heuristic)", p["esper_minus_arm_pp_mean"] <= 0))
    return out


def _gromo_target(arms: dict, pair: dict) -> tuple[str, str, bool]:
    """Esper ≥ GroMo with no more FLOPs than GroMo spent: against its tutorial run where
    Esper spent no more than it, else against its longer run (gromo@esper-flops), which
    spent at least Esper's FLOPs."""
    label = "Esper ≥ GroMo at ≤ GroMo's FLOPs"
    arm = "gromo"
    if arms["esper"]["flops_mean"] > arms[arm]["flops_mean"] and "gromo" + AT_ESPER in pair:
        arm = "gromo" + AT_ESPER
    p, share = pair[arm], arms["esper"]["flops_mean"] / arms[arm]["flops_mean"]
    run = "its tutorial run" if arm == "gromo" else "its run for more epochs"
    ok = p["esper_minus_arm_pp_mean"] >= 0 and p["esper_flops_over_arm"] <= 1 and share <= 1
    return (label, f"{p['esper_minus_arm_pp_mean']:+.2f} pp, wins/losses {p['esper_wins']}/"
                   f"{p['esper_losses']}, at {100 * share:.0f}% of the FLOPs of {run}", ok)


def searched(chosen: dict | None) -> bool:
    """Whether the best schedule was chosen among several spacings (not one spacing run)."""
    return chosen is not None and len(chosen["val_accuracy_mean"]) > 1


def _schedule_target(chosen: dict | None) -> str:
    if chosen is None:
        return "Esper > the fixed schedule"
    every = spacing_of(chosen["arm"])
    if not searched(chosen):
        return f"Esper > the fixed schedule (every {every} epoch(s))"
    return f"Esper > the best fixed schedule (every {every} epoch(s), chosen on validation accuracy)"


def growth_headroom(runs: dict[str, list[dict]]) -> dict | None:
    """How much faster per FLOP the small host learns than Esper's final architecture
    trained static: along the small host's per-epoch test curve, its accuracy minus the
    final architecture's at the same cumulative FLOPs (its curve interpolated), mean over
    the seeds both ran. Growing can gain on that architecture at matched FLOPs only where
    this is positive: before growth the grown model is the small host, so where the small
    host is no faster per FLOP, the best growth can do is keep pace. None without both arms."""
    small = {r["seed"]: r["curve"] for r in runs.get("static-small", []) if r["curve"]}
    final = {r["seed"]: r["curve"] for r in runs.get("esper-arch-static", []) if r["curve"]}
    seeds = sorted(set(small) & set(final))
    if not seeds:
        return None
    n = min(len(small[s]) for s in seeds)
    flops, ahead = [], []
    for k in range(n):
        flops.append(statistics.fmean(small[s][k]["flops"] for s in seeds))
        ahead.append(statistics.fmean(
            100 * (small[s][k]["test_accuracy"] - float(np.interp(  # clamped at the ends
                small[s][k]["flops"], [c["flops"] for c in final[s]],
                [c["test_accuracy"] for c in final[s]])))
            for s in seeds))
    best = max(range(n), key=ahead.__getitem__)
    return {"seeds": len(seeds), "flops": flops, "small_minus_final_pp": ahead,
            "max_pp": ahead[best], "at_flops": flops[best], "at_epoch": best + 1,
            "epochs_ahead": sum(a > 0 for a in ahead)}


def order(names) -> list[str]:
    seq = []
    for arm in ARMS:
        seq.append(arm)
        seq.extend(d for d, s in MATCHED.items() if s == arm)
        if arm == "schedule":
            seq.append("schedule" + AT_ESPER)
            for spaced in sorted((a for a in names if spacing_of(a)), key=spacing_of):
                seq += [spaced, spaced + AT_ESPER]
    return [a for a in seq if a in names]


def table_arms(summary: dict, unavailable) -> list[str]:
    """The arms a table shows, in order: with a schedule search, each spacing rather than
    the "schedule" alias of the best one."""
    names = set(summary["arms"]) | set(unavailable)
    if summary.get("best_schedule"):
        names -= {"schedule", "schedule" + AT_ESPER}
    return order(names)


def label_of(arm: str, cfg: dict) -> str:
    if arm.endswith(AT_ESPER) and arm not in LONGER and cfg.get("lr_schedule", "constant") != "constant":
        return FITTED_LABEL
    settings = _esper_settings(cfg) if arm == "esper" else []
    if settings:
        return "Esper, heuristic, " + ", ".join(settings)
    if arm == "esper-stack" and (policy := _policy_settings(cfg)):  # the esper arm's policy
        return ", ".join([LABELS[arm], *policy])
    every = spacing_of(arm)
    if every:
        return LABELS["schedule"].replace("every E/10 epochs", f"every {every} epoch(s)")
    if arm == "schedule" and isinstance(cfg.get("schedule_every"), int):  # before the search
        return LABELS[arm].replace("every E/10 epochs", f"every {cfg['schedule_every']} epoch(s)")
    return LABELS.get(arm, arm)


def _esper_settings(cfg: dict) -> list[str]:
    """What the esper arm ran with other than the defaults (--slot-depth, --seed-init,
    --width-growth, --seed-lr, and its policy's settings)."""
    settings = []
    if esper_setting(cfg, "slot_depth") > 1:
        settings.append(f"seeds that stack (slot_depth {cfg['slot_depth']})")
    if esper_setting(cfg, "seed_param_fraction") != ESPER_SETTINGS["seed_param_fraction"]:
        settings.append(f"growth up to {cfg['seed_param_fraction']:g}x the host's parameters")
    if esper_setting(cfg, "seed_init") != ESPER_SETTINGS["seed_init"]:
        settings.append(f"seeds initialised from the {cfg['seed_init']} statistic")
    if esper_setting(cfg, "width_growth"):
        settings.append("width growth opted in (BP-WIDEN-HALF)")
    if esper_setting(cfg, "seed_lr") != ESPER_SETTINGS["seed_lr"]:
        settings.append(f"seed rates {cfg['seed_lr']}ed")
    return settings + _policy_settings(cfg)


def _policy_settings(cfg: dict) -> list[str]:
    """What the esper and esper-stack arms' policy and budget ran with other than the
    defaults (--flops-weight, --heuristic, --training-flops-budget, --budget-flops-weight)."""
    settings = []
    weight = esper_setting(cfg, "flops_weight")
    if weight is not None:  # 0: the unpriced defaults of before 2026-12-07, asked for
        settings.append(f"compute {'priced' if weight else 'unpriced'} (flops_weight {weight})")
    heuristic = esper_setting(cfg, "heuristic") or {}
    settings += [f"{key}={json.dumps(value)}" for key, value in heuristic.items()]
    if esper_setting(cfg, "training_flops_budget") is not None:
        priced = "" if esper_setting(cfg, "budget_flops_weight") is None \
            else f" (compute priced under it at {cfg['budget_flops_weight']:g})"
        settings.append(f"a training budget of {cfg['training_flops_budget']:,g} GFLOPs{priced}")
    return settings


def _schedule_line(schedule: str, rate: float = LEARNING_RATE) -> str:
    if schedule == "constant":
        return (f"Learning rate: Adam at a constant {rate:g} in every arm; the FLOP-matched rows are "
                "the full run's test accuracy where its cumulative FLOPs reached Esper's.")
    return (f"Learning rate: Adam from {rate:g}, decayed to zero on a cosine over the run in every "
            "arm (Esper's seed groups follow it, as a user's scheduler); the FLOP-matched rows "
            "are second runs of the same model and initialisation whose schedule ends at "
            "Esper's FLOPs.")


def _test_set_line(hosts: list[str]) -> str:
    """What the test accuracy is measured on, per host family."""
    image = "Fashion-MNIST's official 10,000-image test set" if set(hosts) - {"char"} else ""
    text = ("held-out Shakespeare plays (next-character accuracy over every position of "
            "their sequences; no line of a test play is ever trained on)") if "char" in hosts else ""
    return "Test accuracy on " + " and on ".join(x for x in (image, text) if x)


def machines(cfg: dict) -> list[str]:
    """Every machine behind a result's runs (its own, those of results merged into it or
    whose Esper runs it took); "not recorded" for results from before machines were."""
    own = cfg.get("machines") or [cfg.get("machine") or "not recorded"]
    return sorted(set(own))


def _machine_line(cfg: dict) -> str:
    found = machines(cfg)
    if len(found) == 1:
        return f"Machine: {found[0]}."
    return ("Machines: " + "; ".join(found) + ". A seed's run repeats to the bit on one machine, "
            "not across machines (another CPU rounds differently), so a paired difference between "
            "runs made on two of them also carries that.")


def markdown(result: dict) -> str:
    cfg = result["config"]
    done = cfg.get("seeds_done", cfg["seeds"])
    seeds = f"{done} seed(s)" if done == cfg["seeds"] else f"{done} of {cfg['seeds']} seeds (partial)"
    data = "Fashion-MNIST" if "char" not in cfg["hosts"] else (
        "Shakespeare (characters)" if cfg["hosts"] == ["char"] else "Fashion-MNIST and Shakespeare")
    lines = [f"# Does growth pay? {data}, {seeds}, {cfg['epochs']} epochs",
             "", f"Command: `{cfg['command']}`", ""]
    lines += [f"Merged in: `{c}`" for c in cfg.get("merged", [])]
    lines += ["", _machine_line(cfg)]
    if cfg.get("note"):  # what a reader must know to regenerate it with today's code
        lines += ["", f"Note: {cfg['note']}."]
    lines += ["",
             _test_set_line(cfg["hosts"]) + " (mean ± sd over seeds); training "
             "GFLOPs counted with `torch.utils.flop_counter` on every pass run (training steps, "
             "validation passes, Esper's safe points, GroMo's statistics and line searches); "
             "paired differences are Esper minus the arm, per seed, in percentage points.", "",
             _schedule_line(cfg.get("lr_schedule", "constant"), cfg.get("learning_rate", LEARNING_RATE)), ""]
    if cfg.get("quick"):
        lines += ["**--quick run: a data subset and a couple of epochs; it proves the harness "
                  "runs and says nothing about the result.**", ""]
    for host, h in result["hosts"].items():
        text = host == "char"  # next-character accuracy, and bits per character
        lines += [f"## {host.upper()} host", "",
                  f"| arm | test {'next-char ' if text else ''}accuracy (%) | "
                  f"{'test bits/char | ' if text else ''}training GFLOPs | params | wall s | "
                  "Esper − arm (pp) | Esper wins / losses |",
                  "|---|---|---|---|---|---|---|" + ("---|" if text else "")]
        summary = h["summary"]
        search = summary.get("best_schedule")
        chosen = search["arm"] if searched(search) else None
        for arm in table_arms(summary, h["unavailable"]):
            label = label_of(arm, cfg) + (", the best on validation" if arm == chosen else "")
            if arm in h["unavailable"]:
                lines.append(f"| {label} | {h['unavailable'][arm]} | | | | | |" + (" |" if text else ""))
                continue
            a = summary["arms"][arm]
            p = summary["paired_vs_esper"].get(arm)
            diff = f"{p['esper_minus_arm_pp_mean']:+.2f} ± {p['esper_minus_arm_pp_sd']:.2f}" if p else "—"
            wl = f"{p['esper_wins']} / {p['esper_losses']}" if p else "—"
            name = f"**{label}**" if arm == "esper" else label
            wall = f"{a['wall_s_mean']:.0f}" if math.isfinite(a["wall_s_mean"]) else ""
            bits = ""
            if text:
                bits = f"{a['test_bits_mean']:.3f} | " if math.isfinite(a["test_bits_mean"]) else " | "
            lines.append(f"| {name} | {100 * a['test_accuracy_mean']:.2f} ± {100 * a['test_accuracy_sd']:.2f} "
                         f"| {bits}{a['flops_mean'] / 1e9:.1f} | {a['params_mean']:,.0f} | {wall} | {diff} | {wl} |")
        lines += ["", "| issue 13 target | measured | met |", "|---|---|---|"]
        for label, measured, ok in targets(summary):
            lines.append(f"| {label} | {measured} | {'—' if ok is None else ('yes' if ok else 'no')} |")
        lines.append("")
        room = growth_headroom(h["runs"])
        if room is not None:
            lines += [_headroom_line(room), ""]
    return "\n".join(lines) + "\n"


def _headroom_line(room: dict) -> str:
    """The growth-headroom finding in words (see growth_headroom)."""
    head = (f"Growth headroom (per-epoch test curves, {room['seeds']} seed(s)): the small host is "
            f"ahead of Esper's final architecture at equal cumulative FLOPs after "
            f"{room['epochs_ahead']} of its {len(room['flops'])} epochs; ")
    if room["max_pp"] <= 0:
        return head + (f"never ahead (closest: {room['max_pp']:+.2f} pp at epoch {room['at_epoch']}), "
                       "so growing toward that architecture can at best keep pace with it at "
                       "matched FLOPs.")
    return head + (f"at most {room['max_pp']:+.2f} pp, at {room['at_flops'] / 1e9:.0f} GFLOPs "
                   f"(epoch {room['at_epoch']}): the most a germination then could carry over.")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hosts = list(result["hosts"])
    fig, axes = plt.subplots(1, len(hosts), figsize=(7 * len(hosts), 5.5), squeeze=False)
    colours = {"esper": "tab:blue", "learned": "navy", "esper-width": "tab:cyan",
               "esper-plateau-only": "teal", "esper-late-slowdown": "deepskyblue",
               "esper-stack": "tab:pink", "esper-arch-static": "tab:orange",
               "esper-arch-static@esper-flops": "darkorange", "esper-arch-restarts": "gold",
               "esper-arch-restarts@esper-flops": "goldenrod", "static-final-size": "tab:green",
               "static-final-size@esper-flops": "darkgreen", "static-small": "grey",
               "random": "tab:red", "schedule": "tab:purple", "gromo": "tab:brown",
               "gromo@esper-flops": "sienna",
               "static-large": "black"}
    for ax, host in zip(axes[0], hosts, strict=True):
        h = result["hosts"][host]
        names = table_arms(h["summary"], ())
        for arm in names:
            c = colours.get("schedule" if spacing_of(arm.removesuffix(AT_ESPER)) else arm, "black")
            if arm in h["runs"]:  # the mean curve over seeds, epoch by epoch
                curves = [r["curve"] for r in h["runs"][arm] if r["curve"]]
                n = min(len(cv) for cv in curves) if curves else 0
                if n:
                    xs = [statistics.fmean(cv[k]["flops"] for cv in curves) / 1e9 for k in range(n)]
                    ys = [100 * statistics.fmean(cv[k]["test_accuracy"] for cv in curves) for k in range(n)]
                    ax.plot(xs, ys, color=c, alpha=0.35, linewidth=1)
            a = h["summary"]["arms"][arm]
            ax.errorbar(a["flops_mean"] / 1e9, 100 * a["test_accuracy_mean"],
                        xerr=a["flops_sd"] / 1e9, yerr=100 * a["test_accuracy_sd"], fmt="o" if "@" not in arm else "s",
                        color=c, capsize=3, label=label_of(arm, result["config"]).strip(),
                        markersize=9 if arm == "esper" else 6)
        spread = [h["summary"]["arms"][a]["flops_mean"] for a in names]
        if spread and max(spread) > 4 * min(spread):
            ax.set_xscale("log")
        ax.set_xlabel("training GFLOPs (train + validation + extra passes)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{host.upper()} host, {result['config'].get('seeds_done', result['config']['seeds'])} "
                     f"seed(s), {result['config']['epochs']} epochs")
        ax.grid(alpha=0.3)
        finals = [100 * h["summary"]["arms"][a]["test_accuracy_mean"] for a in names]
        if finals:
            ax.set_ylim(min(finals) - 2.5, max(finals) + 1.0)
    fig.tight_layout()
    for ax in axes[0]:  # below the axes, laid out without them: a dozen arms would cover the points
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
