"""Who is calling, and may they have what they ask for."""
