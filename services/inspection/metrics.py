from prometheus_client import Counter, Histogram

INSPECTIONS_SUBMITTED = Counter("chuangwei_inspections_submitted_total", "Inspections submitted", ["kind"])
INSPECTION_SCORES = Histogram("chuangwei_inspection_score", "Scores of submitted inspections (100-point scale)",
                              ["checklist"], buckets=(50, 60, 70, 80, 85, 90, 95, 100))
