"""The provision ledger (第41条): counts, audit trail and the annual report."""
