"""Operations: organisation admin on a server, and the local Milvus server launcher."""
