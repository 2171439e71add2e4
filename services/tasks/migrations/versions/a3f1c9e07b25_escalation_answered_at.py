"""escalation answered_at: an escalated task stays workable, the answer is tracked apart from the status

Revision ID: a3f1c9e07b25
Revises: 5cf5793777c3
Create Date: 2026-12-08 02:00:00.000000
"""
from alembic import op
import sqlalchemy as sa



revision = 'a3f1c9e07b25'
down_revision = '5cf5793777c3'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tasks_tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('answered_at', sa.DateTime(timezone=True), nullable=True))
    # Before this revision a task left `escalated` only through the answer: every escalated task
    # that is no longer escalated was answered (at its latest `answer` in the history, else at its
    # last change). Without this, those tasks would look as if their escalation still awaited an answer.
    op.execute(
        "UPDATE tasks_tasks SET answered_at = COALESCE("
        "(SELECT max(h.at) FROM tasks_history h WHERE h.task_id = tasks_tasks.id AND h.action = 'answer'), "
        "updated_at) "
        "WHERE escalated_at IS NOT NULL AND status <> 'escalated'")


def downgrade() -> None:
    with op.batch_alter_table('tasks_tasks', schema=None) as batch_op:
        batch_op.drop_column('answered_at')
