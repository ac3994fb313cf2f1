// Fleet provisioning with the AWS IoT Device SDK v2 for JavaScript
// (aws-iot-device-sdk-v2, pinned in package.json), as a device does it with
// AWS: only the endpoint, the port and the root CA are the emulator's.
// Driven by ../awsiotsdk_js.rs; installed by ci/node-sdk.sh.
//
// Usage: node provision.js --endpoint HOST --port N --ca FILE --cert FILE
//   --key FILE --client-id ID --template NAME --serial SN --mqtt 3|5
//   --mode keys|csr [--csr FILE] [--api topics|rr]
//
// --api topics (the default) subscribes to the accepted and rejected topics
// itself with IotIdentityClient, as the SDK's sample samples/node/
// fleet_provisioning did (deprecated in 1.23.0, removed in 1.23.1); --api rr
// uses IotIdentityClientv2, the request-response client of the current
// sample (samples/node/service_clients/fleet_provisioning), which subscribes
// to the same topics for each request.
//
// On success prints {thingName, certificateId, deviceConfiguration,
// certificatePem, privateKey} as JSON and exits 0. When the service rejects
// a request, prints {rejected, statusCode, errorCode, errorMessage,
// certificateId?} (the rejection as AWS documents it, and the certificate
// made before, if any) and exits 2. Any other failure: the reason on stderr,
// exit 1.
"use strict";

const fs = require("node:fs");
const { once } = require("node:events");
const { parseArgs } = require("node:util");
const { iot, iotidentity, mqtt, mqtt5 } = require("aws-iot-device-sdk-v2");

const TIMEOUT_MS = 20000;

/** A service rejection: exits 2 with AWS's error fields on stdout. */
class Rejected extends Error {
  constructor(what, error, certificateId) {
    super(`${what} rejected: ${error.statusCode} ${error.errorCode} ${error.errorMessage}`);
    this.body = {
      rejected: what,
      statusCode: error.statusCode,
      errorCode: error.errorCode,
      errorMessage: error.errorMessage,
      certificateId,
    };
  }
}

function parse() {
  const { values } = parseArgs({
    options: {
      endpoint: { type: "string" },
      port: { type: "string" },
      ca: { type: "string" },
      cert: { type: "string" },
      key: { type: "string" },
      "client-id": { type: "string" },
      template: { type: "string" },
      serial: { type: "string" },
      mqtt: { type: "string" },
      mode: { type: "string" },
      csr: { type: "string" },
      api: { type: "string", default: "topics" },
    },
  });
  for (const a of ["endpoint", "port", "ca", "cert", "key", "client-id", "template", "serial"]) {
    if (values[a] === undefined) throw new Error(`--${a} is required`);
  }
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new Error(`--port ${values.port}: not a TCP port`);
  }
  const choose = (name, allowed) => {
    if (!allowed.includes(values[name])) {
      throw new Error(`--${name} ${values[name]}: must be one of ${allowed.join(", ")}`);
    }
    return values[name];
  };
  const args = {
    ...values,
    port,
    clientId: values["client-id"],
    mqtt: choose("mqtt", ["3", "5"]),
    mode: choose("mode", ["keys", "csr"]),
    api: choose("api", ["topics", "rr"]),
  };
  if (args.mode === "csr" && args.csr === undefined) throw new Error("--mode csr needs --csr FILE");
  return args;
}

function timeout(what) {
  return new Promise((_, reject) =>
    setTimeout(() => reject(new Error(`${what}: no answer in ${TIMEOUT_MS} ms`)), TIMEOUT_MS).unref()
  );
}

/**
 * The protocol client, made with the SDK's own builders, not yet connected;
 * `start` connects, `close` disconnects.
 */
function protocolClient(args) {
  if (args.mqtt === "3") {
    // The builder offers ALPN x-amzn-mqtt-ca whatever the port (AWS accepts
    // it on 8883 too); the emulator's MQTT port ignores it, as AWS's does.
    const config = iot.AwsIotMqttConnectionConfigBuilder.new_mtls_builder_from_path(args.cert, args.key)
      .with_certificate_authority_from_path(undefined, args.ca)
      .with_endpoint(args.endpoint)
      .with_port(args.port)
      .with_client_id(args.clientId)
      .with_clean_session(false)
      .with_keep_alive_seconds(30)
      .build();
    const connection = new mqtt.MqttClient().new_connection(config);
    return {
      protocol: connection,
      start: () => {
        // connect() settles only once the client stops retrying; a refused
        // handshake is reported at once as connection_failure.
        const failed = once(connection, "connection_failure").then(([event]) => {
          throw new Error(`MQTT 3.1.1 connection failed: ${event.error}`);
        });
        return Promise.race([connection.connect(), failed, timeout("MQTT 3.1.1 CONNECT")]);
      },
      close: () => connection.disconnect(),
    };
  }
  const builder = iot.AwsIotMqtt5ClientConfigBuilder.newDirectMqttBuilderWithMtlsFromPath(
    args.endpoint,
    args.cert,
    args.key
  );
  builder.withCertificateAuthorityFromPath(undefined, args.ca);
  builder.withPort(args.port);
  builder.withConnectProperties({ clientId: args.clientId, keepAliveIntervalSeconds: 30 });
  const client = new mqtt5.Mqtt5Client(builder.build());
  return {
    protocol: client,
    start: () => {
      const connected = once(client, "connectionSuccess");
      const failed = once(client, "connectionFailure").then(([event]) => {
        throw new Error(`MQTT 5 connection failed: ${event.error}`);
      });
      client.start();
      return Promise.race([connected, failed, timeout("MQTT 5 CONNECT")]);
    },
    close: async () => {
      const stopped = once(client, "stopped");
      client.stop();
      await stopped;
      client.close();
    },
  };
}

/**
 * One request the way IotIdentityClient is used: subscribe to accepted and
 * rejected (waiting for both SUBACKs), then publish, then wait for either.
 */
async function request(what, subscribeAccepted, subscribeRejected, publish) {
  let settle;
  const answer = new Promise((resolve, reject) => {
    settle = { resolve, reject };
  });
  const qos = mqtt.QoS.AtLeastOnce;
  await subscribeAccepted(qos, (error, response) =>
    error ? settle.reject(new Error(`${what}: ${error.message}`)) : settle.resolve(response)
  );
  await subscribeRejected(qos, (error, response) =>
    settle.reject(error ? new Error(`${what}: ${error.message}`) : new Rejected(what, response))
  );
  // The answer may come before the PUBACK that ends `publish`: mark it
  // handled now, so that Node does not abort on an early rejection.
  answer.catch(() => {});
  await publish(qos);
  return Promise.race([answer, timeout(what)]);
}

/** The three Fleet Provisioning calls through IotIdentityClient (topics). */
function topicsApi(protocol, mqttVersion) {
  const identity =
    mqttVersion === "3"
      ? new iotidentity.IotIdentityClient(protocol)
      : iotidentity.IotIdentityClient.newFromMqtt5Client(protocol);
  return {
    createKeysAndCertificate: () =>
      request(
        "CreateKeysAndCertificate",
        (qos, h) => identity.subscribeToCreateKeysAndCertificateAccepted({}, qos, h),
        (qos, h) => identity.subscribeToCreateKeysAndCertificateRejected({}, qos, h),
        (qos) => identity.publishCreateKeysAndCertificate({}, qos)
      ),
    createCertificateFromCsr: (req) =>
      request(
        "CreateCertificateFromCsr",
        (qos, h) => identity.subscribeToCreateCertificateFromCsrAccepted({}, qos, h),
        (qos, h) => identity.subscribeToCreateCertificateFromCsrRejected({}, qos, h),
        (qos) => identity.publishCreateCertificateFromCsr(req, qos)
      ),
    registerThing: (req) => {
      const sub = { templateName: req.templateName };
      return request(
        "RegisterThing",
        (qos, h) => identity.subscribeToRegisterThingAccepted(sub, qos, h),
        (qos, h) => identity.subscribeToRegisterThingRejected(sub, qos, h),
        (qos) => identity.publishRegisterThing(req, qos)
      );
    },
    close: () => {},
  };
}

/** The same calls through IotIdentityClientv2 (request-response). */
function rrApi(protocol, mqttVersion) {
  // One request at a time, each with its accepted and rejected topics.
  const options = { maxRequestResponseSubscriptions: 2, maxStreamingSubscriptions: 0, operationTimeoutInSeconds: 20 };
  const identity =
    mqttVersion === "3"
      ? iotidentity.IotIdentityClientv2.newFromMqtt311(protocol, options)
      : iotidentity.IotIdentityClientv2.newFromMqtt5(protocol, options);
  const call = (what, f) => async (req) => {
    try {
      return await f(req);
    } catch (e) {
      if (e.modeledError) throw new Rejected(what, e.modeledError);
      throw new Error(`${what}: ${e.message}${e.internalError ? ` (${e.internalError})` : ""}`);
    }
  };
  return {
    createKeysAndCertificate: call("CreateKeysAndCertificate", () => identity.createKeysAndCertificate({})),
    createCertificateFromCsr: call("CreateCertificateFromCsr", (r) => identity.createCertificateFromCsr(r)),
    registerThing: call("RegisterThing", (r) => identity.registerThing(r)),
    close: () => identity.close(),
  };
}

async function main() {
  const args = parse();
  const csr = args.mode === "csr" ? fs.readFileSync(args.csr, "utf8") : undefined;
  const { protocol, start, close } = protocolClient(args);
  // The service client is made before the connection, as in the SDK's
  // samples: the request-response client follows the connection's events.
  const api = args.api === "rr" ? rrApi(protocol, args.mqtt) : topicsApi(protocol, args.mqtt);
  await start();

  const cert =
    args.mode === "keys"
      ? await api.createKeysAndCertificate()
      : await api.createCertificateFromCsr({ certificateSigningRequest: csr });
  let thing;
  try {
    thing = await api.registerThing({
      templateName: args.template,
      certificateOwnershipToken: cert.certificateOwnershipToken,
      parameters: { SerialNumber: args.serial },
    });
  } catch (e) {
    if (e instanceof Rejected) e.body.certificateId = cert.certificateId;
    throw e;
  }
  api.close();
  await close();
  console.log(
    JSON.stringify({
      thingName: thing.thingName,
      certificateId: cert.certificateId,
      deviceConfiguration: thing.deviceConfiguration,
      certificatePem: cert.certificatePem,
      privateKey: cert.privateKey,
    })
  );
}

main().then(
  () => process.exit(0),
  (e) => {
    // aws-crt rejects some promises with a string, not an Error.
    console.error(`provision.js: ${e instanceof Error ? e.message : e}`);
    if (e instanceof Rejected) {
      console.log(JSON.stringify(e.body));
      process.exit(2);
    }
    process.exit(1);
  }
);
