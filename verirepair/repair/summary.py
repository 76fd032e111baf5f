"""Human-readable summary of a RepairReport."""

from __future__ import annotations

from verirepair.repair.loop import RepairReport


def repair_summary(report: RepairReport) -> str:
    """A few lines: status, per-property verdicts, size of the change, fidelity."""
    lines = [f"repair: {report.status}"]
    for prop in report.properties:
        second = (f"; {prop.cross_check} ({prop.cross_check_seconds:.2f} s)"
                  if prop.cross_check else "")
        after = (f" -> {prop.after} ({prop.seconds:.2f} s, {prop.engine})"
                 if prop.after != "not checked" else "")
        lines.append(f"  {prop.role:8s} {prop.path}: {prop.before} "
                     f"({prop.seconds_before:.2f} s){after}{second}")
    if report.changed_parameters:
        lines.append(f"  changed parameters: {report.changed_parameters}, "
                     f"L2 {report.l2_change:.4g}, Linf {report.linf_change:.4g}")
        lines.append(f"  leaf boxes: {report.leaf_boxes}, QP solves: {report.iterations}")
        if report.free_set:
            lines.append(f"  patched: {report.free_set}"
                         + (f" (localize: {report.localize})" if report.localize != "none"
                            else ""))
    if report.agreement is not None:
        where = report.fidelity_domain
        box = "the --domain box" if where.get("given") else "the hull of the property boxes"
        on = f" ({where['decision']}, {where['samples']:,} samples of {box})" if where else ""
        lines.append(f"  decision agreement: {100 * report.agreement:.2f} %{on}, "
                     f"max output change: {report.max_output_change:.4g}"
                     + (f" ({report.max_output_change / report.output_scale:.3g}x the "
                        f"output scale {report.output_scale:.4g})"
                        if report.output_scale else ""))
    if report.output:
        lines.append(f"  written: {report.output}")
    else:
        lines.append("  no output file written")
    lines.append(f"  time: {report.seconds:.1f} s")
    return "\n".join(lines)
