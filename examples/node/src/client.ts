// A verifier's client of jpki-va in Node.js: one Check, then one CheckStream batch,
// from the stubs ts-proto generates for @grpc/grpc-js (src/gen/, `npm run generate`).
//
//   node dist/client.js --target HOST:PORT --ca root.pem --cert client.pem --key client.key \
//       --kind CARD_AUTH --serial 1A2B [--serial ...]
//
// Verifiers are identified by their mTLS client certificate. For a demo responder on
// loopback, `--insecure --verifier ID` sends plaintext and names the verifier in the
// x-jpki-verifier header instead (the responder accepts that only on loopback).
//
// Prints one JSON line per answer: {"call":"Check",...}, then one per CheckStream item
// with either its status or its refusal (error code and text). Exit status: 0 when
// every call succeeded (refused items included), 1 when a call failed, 2 on bad usage.

import { readFileSync } from "node:fs";

import { ChannelCredentials, Metadata, type ServiceError, status } from "@grpc/grpc-js";

import {
  CertKind,
  CheckBatchRequest,
  type CheckBatchResponse,
  CheckRequest,
  CertificateStatus,
  certKindFromJSON,
  checkErrorCodeToJSON,
  StatusServiceClient,
} from "./gen/jpki_va/protos/va";

interface Options {
  target: string;
  kind: CertKind;
  serials: Buffer[];
  credentials: ChannelCredentials;
  metadata: Metadata;
  timeoutMs: number;
}

class UsageError extends Error {}

function parse(argv: string[]): Options {
  const values = new Map<string, string[]>();
  let insecure = false;
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === "--insecure") {
      insecure = true;
      continue;
    }
    const value = argv[i + 1];
    if (!flag.startsWith("--") || value === undefined) {
      throw new UsageError(`expected --option value, got ${flag}`);
    }
    values.set(flag, [...(values.get(flag) ?? []), value]);
    i++;
  }
  const one = (flag: string): string | undefined => values.get(flag)?.at(-1);
  const target = one("--target");
  if (!target) throw new UsageError("--target HOST:PORT is required");
  const kindName = (one("--kind") ?? "").toUpperCase().replace(/-/g, "_");
  const kind = certKindFromJSON(`CERT_KIND_${kindName}`);
  if (kind === CertKind.UNRECOGNIZED || kind === CertKind.CERT_KIND_UNSPECIFIED) {
    throw new UsageError("--kind must be CARD_SIGN, CARD_AUTH, MOBILE_SIGN or MOBILE_AUTH");
  }
  const serials = (values.get("--serial") ?? []).map((hex) => {
    const even = hex.length % 2 ? `0${hex}` : hex;
    if (!/^[0-9a-fA-F]+$/.test(hex)) throw new UsageError(`--serial ${hex}: not hexadecimal`);
    return Buffer.from(even, "hex");
  });
  if (serials.length === 0) throw new UsageError("at least one --serial HEX is required");
  const metadata = new Metadata();
  let credentials: ChannelCredentials;
  if (insecure) {
    const verifier = one("--verifier");
    if (verifier) metadata.set("x-jpki-verifier", verifier);
    credentials = ChannelCredentials.createInsecure();
  } else {
    const [ca, cert, key] = ["--ca", "--cert", "--key"].map((flag) => {
      const path = one(flag);
      if (!path) throw new UsageError(`${flag} is required for TLS (or pass --insecure)`);
      return readFileSync(path);
    });
    credentials = ChannelCredentials.createSsl(ca, key, cert);
  }
  const timeoutMs = Number(one("--timeout") ?? "10") * 1000;
  return { target, kind, serials, credentials, metadata, timeoutMs };
}

function deadline(options: Options): Date {
  return new Date(Date.now() + options.timeoutMs);
}

function print(line: object): void {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

function check(client: StatusServiceClient, options: Options): Promise<void> {
  const request = CheckRequest.fromPartial({
    cert: { kindSerial: { kind: options.kind, serial: options.serials[0] } },
  });
  return new Promise((resolve, reject) => {
    client.check(request, options.metadata, { deadline: deadline(options) }, (error, reply) => {
      if (error) return reject(error);
      print({ call: "Check", status: CertificateStatus.toJSON(reply.status!) });
      resolve();
    });
  });
}

function checkStream(client: StatusServiceClient, options: Options): Promise<void> {
  const batch = CheckBatchRequest.fromPartial({
    requests: options.serials.map((serial) => ({
      cert: { kindSerial: { kind: options.kind, serial } },
    })),
  });
  return new Promise((resolve, reject) => {
    const call = client.checkStream(options.metadata, { deadline: deadline(options) });
    call.on("data", (reply: CheckBatchResponse) => {
      for (const result of reply.results) {
        if (result.error !== undefined) {
          // The code is for programs; the text says the same for people.
          print({
            call: "CheckStream",
            errorCode: checkErrorCodeToJSON(result.errorCode),
            error: result.error,
          });
        } else {
          print({ call: "CheckStream", status: CertificateStatus.toJSON(result.status!) });
        }
      }
      call.end(); // one batch asked, one answered
    });
    call.on("error", reject);
    call.on("end", resolve);
    call.write(batch);
  });
}

async function main(): Promise<number> {
  let options: Options;
  try {
    options = parse(process.argv.slice(2));
  } catch (error) {
    if (error instanceof UsageError) {
      process.stderr.write(`jpki-va node client: ${error.message}\n`);
      return 2;
    }
    throw error;
  }
  const client = new StatusServiceClient(options.target, options.credentials);
  try {
    await check(client, options);
    await checkStream(client, options);
    return 0;
  } catch (error) {
    const failure = error as ServiceError;
    const code = failure.code === undefined ? "" : `${status[failure.code]}: `;
    process.stderr.write(`jpki-va node client: ${code}${failure.details ?? failure.message}\n`);
    return 1;
  } finally {
    client.close();
  }
}

main().then((code) => {
  process.exitCode = code;
});
