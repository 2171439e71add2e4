"""Metrics of the tasks service (整改任务)."""
from prometheus_client import Counter, Gauge, Histogram

TASKS_OPENED = Counter("chuangwei_tasks_opened_total", "Rectification tasks opened", ["severity"])
OPEN_TASKS = Gauge("chuangwei_tasks_open", "Tasks not yet closed, by light and severity", ["light", "severity"])
OVERDUE_TASKS = Gauge("chuangwei_tasks_overdue", "Tasks past their deadline and not closed")
HOURS_TO_FIX = Histogram("chuangwei_task_hours_to_fix", "Hours from finding to the accepted fix (closed tasks)",
                         buckets=(2, 6, 12, 24, 48, 72, 168, 336, 720))
ESCALATIONS = Counter("chuangwei_task_escalations_total", "Tasks escalated to the tier above",
                      ["by"])  # by: responsible | sweeper
URGES = Counter("chuangwei_task_urges_total", "Urge notices (督办) issued for overdue tasks")
RELAPSES = Counter("chuangwei_task_relapses_total", "New tasks that repeat a closed one (反弹)")
TRANSITIONS = Counter("chuangwei_task_transitions_total", "Task lifecycle transitions", ["action"])
COORDINATION_REQUESTS = Counter("chuangwei_coordination_requests_total",
                                "Escalations received from child stacks (上报协调)")
TASKS_CLOSED_FROM_HISTORY = Counter("chuangwei_tasks_closed_from_history_total",
                                    "Tasks opened and closed from imported history (历史导入), with their own dates")
