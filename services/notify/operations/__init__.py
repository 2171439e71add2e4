"""Use cases of the notification service, one module per capability.

Each function takes a SQLAlchemy session (the caller owns the transaction) and a
`NotifyContext`; no nameko imports, so these run the same from an event handler, an HTTP
entrypoint, the delivery worker, a timer or a test. The package re-exports every public
name, so callers keep `from services.notify import operations as ops`.
"""
from services.notify.operations.common import (  # noqa: F401
    default_rules, NotifyContext, within_any, visible_nodes, node_chain)
from services.notify.operations.contacts import (  # noqa: F401
    contact_out, register_contact, replace_contact, list_contacts, contacts_of)
from services.notify.operations.rules import (  # noqa: F401
    effective_rules, get_rules, replace_rules, rule_versions, template_overrides, put_template, get_template,
    delete_template)
from services.notify.operations.notices import (  # noqa: F401
    notify)
from services.notify.operations.events import (  # noqa: F401
    apply_task_event, apply_coordination_requested, apply_score_published, apply_ranking_published, subject_view,
    apply_inspection_submitted, apply_inspection_released, apply_check_missed, apply_indicator,
    apply_child_freshness_changed)
from services.notify.operations.deliveries import (  # noqa: F401
    DeliveryJob, claim_due, record_attempt, list_dead_letters, replay_dead_letter)
from services.notify.operations.inbox import (  # noqa: F401
    notification_out, list_notifications, inbox_owner, list_inbox, read_inbox_item, acknowledge_inbox_item)
from services.notify.operations.bulletins import (  # noqa: F401
    bulletin_out, generate_bulletin, generate_due_bulletin, request_bulletin, get_bulletin, list_bulletins,
    public_board, send_newsletter)
from services.notify.operations.archive import review_archive  # noqa: F401
