"""Plain domain types, errors and field limits shared by every layer; they import no vision,
vector, database or transport library (numpy only)."""
