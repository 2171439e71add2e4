"""idempotency keys scoped to the caller and the endpoint, with the body's fingerprint

Revision ID: b1d7c3a9e2f4
Revises: 81c226c1e7e5
Create Date: 2026-12-08 02:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = 'b1d7c3a9e2f4'
down_revision = '81c226c1e7e5'
branch_labels = None
depends_on = None

TABLE = 'inspection_inspections'
# The initial schema's unique constraint on idempotency_key was unnamed: PostgreSQL named it
# <table>_<column>_key; SQLite's batch mode finds it by this convention.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(f'ALTER TABLE {TABLE} DROP CONSTRAINT IF EXISTS {TABLE}_idempotency_key_key')
        op.add_column(TABLE, sa.Column('idempotency_scope', sa.String(length=64), nullable=True))
        op.add_column(TABLE, sa.Column('request_fingerprint', sa.String(length=64), nullable=True))
        op.create_unique_constraint('uq_inspection_idempotency', TABLE, ['idempotency_scope', 'idempotency_key'])
        return
    with op.batch_alter_table(TABLE, naming_convention=NAMING) as batch_op:
        batch_op.drop_constraint(f'uq_{TABLE}_idempotency_key', type_='unique')
        batch_op.add_column(sa.Column('idempotency_scope', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('request_fingerprint', sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint('uq_inspection_idempotency', ['idempotency_scope', 'idempotency_key'])


def downgrade() -> None:
    with op.batch_alter_table(TABLE) as batch_op:
        batch_op.drop_constraint('uq_inspection_idempotency', type_='unique')
        batch_op.drop_column('request_fingerprint')
        batch_op.drop_column('idempotency_scope')
        batch_op.create_unique_constraint(f'{TABLE}_idempotency_key_key', ['idempotency_key'])
