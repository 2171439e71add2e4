from prometheus_client import Counter, Histogram

# /metrics is public: an unannounced inspection (暗访) is counted here when its office
# releases it, not when it is submitted (a kind="unannounced" sample moving would tell its
# subject of the visit). Operators read 暗访 counts as released ones.
INSPECTIONS_SUBMITTED = Counter("chuangwei_inspections_submitted_total",
                                "Inspections submitted (暗访: counted on release)", ["kind"])
INSPECTION_SCORES = Histogram("chuangwei_inspection_score", "Scores of submitted inspections (100-point scale)",
                              ["checklist"], buckets=(50, 60, 70, 80, 85, 90, 95, 100))
HISTORY_IMPORTED = Counter("chuangwei_history_imported_total",
                           "Records stored by history imports (历史导入): subjects, places, inspections, findings, "
                           "closed", ["what"])
CHECKS_MISSED = Counter("chuangwei_inspection_checks_missed_total",
                        "Scheduled checks (检查计划) missed in an ended period (漏检), flagged once each", ["frequency"])
