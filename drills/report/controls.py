"""The controls an auditor tests against, and what an evidence bundle shows for each.

One row per control: what the control asks, what the bundle shows for it, and what the
organisation must still supply. The bundle is evidence for a control, never a claim that
the control is met: policy, approvals, people and off-site copies are outside what a drill
can see. docs/auditors.md carries the same table for readers without a bundle.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Control:
    """One control and the evidence a bundle gives for it."""

    framework: str
    control: str
    asks: str
    shows: str
    supply: str


CONTROLS = (
    Control(
        "ISO/IEC 27001:2022",
        "A.8.13 Information backup",
        "backup copies are kept and regularly tested as agreed in a backup policy",
        "every restore test in the period with its date, the backup it restored (name, time "
        "taken, sha256), the checks that proved it and its verdict; the months with no test "
        "of a configured kind; the oldest and newest backups restored",
        "the backup policy (what, how often, how long kept, where), who approved it, the "
        "off-site or off-account copy, protection of the backup media and keys",
    ),
    Control(
        "ISO/IEC 27001:2022",
        "A.5.30 ICT readiness for business continuity",
        "ICT continuity is planned, implemented, maintained and tested against the "
        "continuity objectives",
        "recovery times (RTO) and recovery points (RPO) measured in every test against the "
        "configured targets, over the period, with every failure and the test that followed "
        "it up",
        "the business impact analysis the targets come from, the continuity plan, who owns "
        "it, tests of the parts a drill does not cover (people, sites, suppliers)",
    ),
    Control(
        "SOC 2 (TSC 2017)",
        "A1.2 Recovery infrastructure and backups",
        "backups are made and recovery infrastructure is in place to meet availability objectives",
        "that the backups named in each run existed, were read whole and restored into "
        "fresh infrastructure with the real procedure; the retention window as drilled",
        "the backup schedule and its monitoring, the recovery infrastructure of production, "
        "environmental protections, the system description",
    ),
    Control(
        "SOC 2 (TSC 2017)",
        "A1.3 Recovery plan testing",
        "recovery plan procedures are tested periodically for completeness",
        "a tamper-evident list of every test in the period (a removed or changed test is "
        "named by the chain), failures with their causes and follow-ups, RTO/RPO achieved",
        "the recovery plan document, its review and approval, the remediation of findings "
        "beyond the next drill, the sampling the auditor applies",
    ),
    Control(
        "NIST SP 800-34 Rev. 1",
        "Contingency plan testing (CP-4)",
        "the contingency plan is tested to determine its effectiveness and readiness, and "
        "the results are reviewed and acted on",
        "functional tests of system recovery from backup with their results, timings against "
        "objectives, and the corrective test that followed each failure",
        "the contingency plan, the test plan and scenarios, the after-action review, the "
        "roles and training of the people who would recover",
    ),
    Control(
        "PCI DSS v4.0",
        "12.10.2 incident response plan testing; 9.4.1 backup media",
        "the incident response plan, including recovery, is tested at least once every 12 months",
        "where the cardholder data environment's databases and files are the drilled "
        "estate: a year of restore tests, with dates, results and follow-ups",
        "the incident response plan, the scope of the cardholder data environment, the "
        "storage and inventory of backup media",
    ),
    Control(
        "HIPAA Security Rule",
        "45 CFR 164.308(a)(7)(ii)(D) testing and revision procedures",
        "periodic testing and revision of contingency plans (data backup, disaster recovery)",
        "where ePHI lives in the drilled estate: that its backups were restored and checked, "
        "when, with what result",
        "the contingency plan, the risk analysis, the revisions made after tests, business "
        "associate agreements for the backup storage",
    ),
)
