"""Use cases of the tasks service, one module per capability: opening tasks from findings,
the lifecycle, tiers and coordination, the sweeper, the ledger (工作台账) and its figures.

Each function takes a SQLAlchemy session, `now` (from the controllable clock) and, where it
publishes, an outbox; the caller owns the transaction. No nameko imports. The package
re-exports every public name, so callers keep `from services.tasks import operations as ops`.
"""
from services.tasks.operations.common import (  # noqa: F401
    SYSTEM_ACTOR, NAME_MAX, SUBJECT_MAX, OutboxLike, Settings, scrub_nul, can_see, visible_filter, get_task,
    get_visible_task)
from services.tasks.operations.views import (  # noqa: F401
    task_ref, history_out, task_out)
from services.tasks.operations.figures import (  # noqa: F401
    figures_for_tasks, figures, refresh_figures)
from services.tasks.operations.opening import (  # noqa: F401
    open_tasks, release_inspection)
from services.tasks.operations.tiers import (  # noqa: F401
    accept_delegated, apply_child_update)
from services.tasks.operations.lifecycle import (  # noqa: F401
    Actor, act, SYSTEM)
from services.tasks.operations.coordination import (  # noqa: F401
    coordination_out, record_coordination_request, list_coordination, answer_coordination,
    apply_coordination_answer)
from services.tasks.operations.sweeper import (  # noqa: F401
    sweep)
from services.tasks.operations.ledger import (  # noqa: F401
    list_tasks, task_history, LEDGER_COLUMNS, EXPORT_LIMIT, ledger_rows, FORMULA_LEADS,
    XLSX_CELL_LIMIT, safe_text, csv_cell, export_csv, export_xlsx)
from services.tasks.operations.gauges import (  # noqa: F401
    refresh_gauges)
