#!/usr/bin/env node
// A minimal faceid client in Node.js: enrols a photo under an identity of a gallery, then identifies
// the same photo and prints the identities it matches.  No generated code: @grpc/proto-loader reads
// proto/faceid/v1/faceid.proto at run time.  See README.md.
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const { parseArgs } = require("node:util");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_DIR = process.env.FACEID_PROTO_DIR || path.join(__dirname, "..", "..", "proto");
const USAGE = `usage: node client.js [options] PHOTO
  --server HOST:PORT  faceid server (default $FACEID_SERVER or 127.0.0.1:50051)
  --api-key KEY       API key, a writer's or admin's (default $FACEID_API_KEY)
  --ca-file PEM       CA that signed the server's certificate (TLS); none: plaintext
  --gallery ID        gallery id, which must exist: faceid galleries create ID (default example)
  --identity ID       identity id to enrol the photo under (default example-person)
  --timeout SECONDS   deadline of each call (default 60)`;

async function main() {
  let args;
  try {
    args = parseArgs({
      allowPositionals: true,
      options: {
        server: { type: "string", default: process.env.FACEID_SERVER || "127.0.0.1:50051" },
        "api-key": { type: "string", default: process.env.FACEID_API_KEY || "" },
        "ca-file": { type: "string" },
        gallery: { type: "string", default: "example" },
        identity: { type: "string", default: "example-person" },
        timeout: { type: "string", default: "60" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (err) {
    usage(err.message);
  }
  const { values, positionals } = args;
  if (values.help) usage();
  if (positionals.length !== 1) usage("give one PHOTO");
  const photo = fs.readFileSync(positionals[0]); // a missing file fails as "error: ENOENT: …"

  const definition = protoLoader.loadSync("faceid/v1/faceid.proto", {
    includeDirs: [PROTO_DIR],
    longs: String, // int64 face ids as decimal strings
    enums: String,
    defaults: true, // unset fields read as 0, "" and false
    oneofs: true,
  });
  const { FaceId } = grpc.loadPackageDefinition(definition).faceid.v1;
  const transport = values["ca-file"]
    ? grpc.credentials.createSsl(fs.readFileSync(values["ca-file"]))
    : grpc.credentials.createInsecure();
  const client = new FaceId(values.server, transport);
  // Every call carries the key as `authorization: Bearer <key>`.
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${values["api-key"]}`);
  const seconds = Number(values.timeout);

  const call = (method, request) =>
    new Promise((resolve, reject) => {
      const deadline = Date.now() + seconds * 1000;
      client[method](request, metadata, { deadline }, (err, response) =>
        err ? reject(err) : resolve(response),
      );
    });

  const parent = `galleries/${values.gallery}`;
  try {
    const enrolled = await call("Enroll", { parent, identityId: values.identity, probe: { photo } });
    for (const face of enrolled.faces) {
      console.log(`enrolled ${face.name} under ${values.identity} (already there: ${face.alreadyEnrolled})`);
    }
    const found = await call("Identify", { parent, probe: { photo }, topK: 3 });
    found.faces.forEach((face, i) => {
      const b = face.box || {};
      const box = [b.left, b.top, b.right, b.bottom].map((v) => (v || 0).toFixed(0));
      console.log(`face ${i} at (${box[0]}, ${box[1]})-(${box[2]}, ${box[3]}):`);
      for (const m of face.matches) {
        const scores = `distance ${m.distance.toFixed(3)} similarity ${m.similarity.toFixed(3)}`;
        console.log(`  ${m.identityId} ${scores} match ${m.isMatch}`);
      }
    });
    const best = found.faces.length > 0 && found.faces[0].matches[0];
    console.log(`best match: ${best ? best.identityId : "none"}`);
  } finally {
    client.close();
  }
}

function usage(problem) {
  if (problem) console.error(`error: ${problem}`);
  console.error(USAGE);
  process.exit(2);
}

// A gRPC error as its status code and message (other errors as they are); exit status 1.
function fail(err) {
  if (typeof err.code === "number" && err.code in grpc.status) {
    console.error(`error: ${grpc.status[err.code]} (code ${err.code}): ${err.details}`);
  } else {
    console.error(`error: ${err.message}`);
  }
  process.exitCode = 1;
}

main().catch(fail);
