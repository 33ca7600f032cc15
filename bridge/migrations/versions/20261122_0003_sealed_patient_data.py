"""Sealed patient data: companion columns for phones and names sealed with the data key.

With ``BRIDGE_DATA_KEY`` set, lookup columns hold a keyed hash and these columns hold the sealed
value (see ``bridge.store.sealing``); without a key they stay NULL.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 18:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | Sequence[str] | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('appointment', schema=None) as batch_op:
        batch_op.add_column(sa.Column('address_sealed', sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column('given_name_sealed', sa.LargeBinary(), nullable=True))

    with op.batch_alter_table('consent', schema=None) as batch_op:
        batch_op.add_column(sa.Column('address_sealed', sa.LargeBinary(), nullable=True))

    with op.batch_alter_table('conversation', schema=None) as batch_op:
        batch_op.add_column(sa.Column('address_sealed', sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('conversation', schema=None) as batch_op:
        batch_op.drop_column('address_sealed')

    with op.batch_alter_table('consent', schema=None) as batch_op:
        batch_op.drop_column('address_sealed')

    with op.batch_alter_table('appointment', schema=None) as batch_op:
        batch_op.drop_column('given_name_sealed')
        batch_op.drop_column('address_sealed')
