"""Appointment state: latest known appointment and how to reach its patient.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 04:18:05.591035
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | Sequence[str] | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table('appointment',
    sa.Column('subject_key', sa.String(length=300), nullable=False),
    sa.Column('connector', sa.String(length=32), nullable=False),
    sa.Column('system', sa.String(length=200), nullable=False),
    sa.Column('appointment_id', sa.String(length=200), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=24), nullable=False),
    sa.Column('start_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('end_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('patient_id', sa.String(length=200), nullable=False),
    sa.Column('address', sa.String(length=200), nullable=True),
    sa.Column('language', sa.String(length=12), nullable=True),
    sa.Column('given_name', sa.String(length=200), nullable=True),
    sa.Column('location', sa.String(length=300), nullable=True),
    sa.Column('practitioner', sa.String(length=300), nullable=True),
    sa.Column('service', sa.String(length=300), nullable=True),
    sa.Column('schedule_id', sa.String(length=200), nullable=True),
    sa.Column('contact_allowed', sa.Boolean(), nullable=False),
    sa.Column('contact_block_reason', sa.String(length=40), nullable=True),
    sa.Column('last_event_id', sa.String(length=32), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('subject_key', name=op.f('pk_appointment'))
    )
    with op.batch_alter_table('appointment', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_appointment_address'), ['address', 'start_at'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('appointment', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_appointment_address'))

    op.drop_table('appointment')

