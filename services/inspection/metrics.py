from prometheus_client import Counter, Histogram

INSPECTIONS_SUBMITTED = Counter("chuangwei_inspections_submitted_total", "Inspections submitted", ["kind"])
INSPECTION_SCORES = Histogram("chuangwei_inspection_score", "Scores of submitted inspections (100-point scale)",
                              ["checklist"], buckets=(50, 60, 70, 80, 85, 90, 95, 100))
HISTORY_IMPORTED = Counter("chuangwei_history_imported_total",
                           "Records stored by history imports (历史导入): subjects, places, inspections, findings, "
                           "closed", ["what"])
CHECKS_MISSED = Counter("chuangwei_inspection_checks_missed_total",
                        "Scheduled checks (检查计划) missed in an ended period (漏检), flagged once each", ["frequency"])
