// Starts a throwaway MongoDB-wire server for tests: $MONGODB_URI, else mongod from PATH,
// else FerretDB built by scripts/ferretdb.sh, keeping its data in the machine's PostgreSQL
// (in a database of its own, dropped on stop), or in SQLite where no PostgreSQL answers.
// The implementation is shared with the benches: scripts/lib/mongo-server.mjs.
export { startMongoServer, type MongoServer } from "../../scripts/lib/mongo-server.mjs";
