"""idempotency keys scoped to the caller and the endpoint, with the body's fingerprint

Revision ID: c4e8a2f1b6d3
Revises: 996a496c99d2
Create Date: 2026-12-08 02:10:00
"""
from alembic import op
import sqlalchemy as sa


revision = 'c4e8a2f1b6d3'
down_revision = '996a496c99d2'
branch_labels = None
depends_on = None

# The initial schema's unique constraints on idempotency_key were unnamed: PostgreSQL named
# them <table>_<column>_key; SQLite's batch mode finds them by this convention.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}
TABLES = {'indicators_density_forms': 'uq_indicators_form_idempotency',
          'indicators_surveys': 'uq_indicators_survey_idempotency'}


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == 'postgresql'
    for table, constraint in TABLES.items():
        if postgres:
            op.execute(f'ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {table}_idempotency_key_key')
            op.add_column(table, sa.Column('idempotency_scope', sa.String(length=64), nullable=True))
            op.add_column(table, sa.Column('request_fingerprint', sa.String(length=64), nullable=True))
            op.create_unique_constraint(constraint, table, ['idempotency_scope', 'idempotency_key'])
            continue
        with op.batch_alter_table(table, naming_convention=NAMING) as batch_op:
            batch_op.drop_constraint(f'uq_{table}_idempotency_key', type_='unique')
            batch_op.add_column(sa.Column('idempotency_scope', sa.String(length=64), nullable=True))
            batch_op.add_column(sa.Column('request_fingerprint', sa.String(length=64), nullable=True))
            batch_op.create_unique_constraint(constraint, ['idempotency_scope', 'idempotency_key'])


def downgrade() -> None:
    for table, constraint in TABLES.items():
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_constraint(constraint, type_='unique')
            batch_op.drop_column('request_fingerprint')
            batch_op.drop_column('idempotency_scope')
            batch_op.create_unique_constraint(f'{table}_idempotency_key_key', ['idempotency_key'])
