// A real OpenID provider (panva's certified `oidc-provider`) for mlflow-gate's integration tests. Loopback only.
//
//   node op.mjs                 serve (configuration below, from the environment)
//   node op.mjs rotate          put a new signing key in front of the key file (old keys stay published)
//   node op.mjs drop-old        keep only the newest key in the key file
//
// A running OP watches its key file, so `rotate` / `drop-old` take effect without a restart. The same operations
// are also served over HTTP on the OP's own port (POST /_op/rotate, POST /_op/drop-old), answered only once the
// new keystore is live. Everything else (sessions, grants, refresh tokens) is kept in memory.
//
// Environment:
//   OP_PORT         port on 127.0.0.1 (0 or unset: any free port; the chosen one is printed on the ready line)
//   OP_RESOURCE     the resource server = the gate's URL; audience of JWT access tokens
//   OP_KEYS         key file (a private JWKS); created with one RSA key when missing
//   OP_REDIRECTS    comma-separated redirect URIs of the `mlflow-gate` client (the gate's /_gate/callback)
//   OP_POST_LOGOUT  comma-separated post-logout redirect URIs of the `mlflow-gate` client
//   OP_AT_TTL       access-token lifetime in seconds (default 300)
//   OP_GROUPS       JSON {login or client_id: [group, ...]}; default: no groups
//   OP_CLAIMS       JSON {login: {claim: value}}: extra or overriding user claims (e.g. {"email_verified": false})
//   OP_EXIT_ON_STDIN_EOF  when set, exit as soon as stdin closes (the driver's parent process died)
//
// When serving, the first line on stdout that starts with "OP_READY " carries JSON {issuer, port, pid}.

import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';

import Provider, { errors } from 'oidc-provider';
// Internal modules (the package has no "exports" map): replacing the keystore of a running provider.
import initializeKeystore from 'oidc-provider/lib/helpers/initialize_keystore.js';

const PORT = Number(process.env.OP_PORT || 0);
const RESOURCE = (process.env.OP_RESOURCE || 'http://127.0.0.1:5000').replace(/\/+$/, '');
const KEYS = path.resolve(process.env.OP_KEYS || './op-keys.json');
const AT_TTL = Number(process.env.OP_AT_TTL || 300);
const list = (value) => (value || '').split(',').map((s) => s.trim()).filter(Boolean);
const REDIRECTS = list(process.env.OP_REDIRECTS || `${RESOURCE}/_gate/callback`);
const POST_LOGOUT = list(process.env.OP_POST_LOGOUT);
let GROUPS = JSON.parse(process.env.OP_GROUPS || '{}');
let CLAIMS = JSON.parse(process.env.OP_CLAIMS || '{}');

// The driver's own redirect URI for headless code flows (tests/oidc/provider.py); nothing listens there.
export const TEST_REDIRECT = 'http://127.0.0.1:9/oidc-test/callback';
const SCOPES = 'openid offline_access email profile groups';
const RESOURCE_SCOPES = `${SCOPES} mlflow`;

// ---------------------------------------------------------------------------------------------- keys

function newKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: `k-${Date.now().toString(36)}-${crypto.randomBytes(3).toString('hex')}`, alg: 'RS256', use: 'sig' };
}

function readKeys() {
  return fs.existsSync(KEYS) ? JSON.parse(fs.readFileSync(KEYS, 'utf8')) : { keys: [] };
}

function writeKeys(jwks) {                        // atomic: a watcher never sees half a file
  const text = JSON.stringify(jwks);
  const tmp = `${KEYS}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, text, { mode: 0o600 });
  fs.renameSync(tmp, KEYS);
  return text;
}

function changeKeys(op) {
  const jwks = readKeys();
  if (op === 'rotate') jwks.keys = [newKey(), ...jwks.keys];
  else if (op === 'drop-old') jwks.keys = jwks.keys.slice(0, 1);
  else throw new Error(`unknown key operation ${op}`);
  if (!jwks.keys.length) jwks.keys = [newKey()];
  return { jwks, text: writeKeys(jwks) };
}

if (process.argv[2] === 'rotate' || process.argv[2] === 'drop-old') {
  const { jwks } = changeKeys(process.argv[2]);
  console.log(jwks.keys.map((k) => k.kid).join(','));
  process.exit(0);
} else if (process.argv[2]) {
  console.error('usage: node op.mjs [rotate|drop-old]');
  process.exit(2);
}

if (!fs.existsSync(KEYS) || !readKeys().keys?.length) writeKeys({ keys: [newKey()] });
let keysText = fs.readFileSync(KEYS, 'utf8');

// ---------------------------------------------------------------------------------------------- accounts

const groupsOf = (id) => (Array.isArray(GROUPS[id]) ? GROUPS[id].map(String) : []);

function userClaims(login) {
  return {
    sub: login,
    ...(login.includes('@') ? { email: login, email_verified: true } : {}),
    name: login.split('@')[0],
    groups: groupsOf(login),
    ...(CLAIMS[login] || {}),
  };
}

// ---------------------------------------------------------------------------------------------- provider

function configuration(jwks) {
  return {
    clients: [
      {
        client_id: 'mlflow-gate', client_secret: 'gate-secret', client_name: 'mlflow-gate',
        redirect_uris: [...REDIRECTS, TEST_REDIRECT], post_logout_redirect_uris: POST_LOGOUT,
        grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'],
        token_endpoint_auth_method: 'client_secret_basic',
      },
      {
        client_id: 'mlflow-cli', client_name: 'mlflow command line', token_endpoint_auth_method: 'none',
        application_type: 'native',
        grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
        response_types: [], redirect_uris: [],
      },
      {
        client_id: 'ci-bot', client_secret: 'ci-secret', client_name: 'ci-bot',
        token_endpoint_auth_method: 'client_secret_basic',
        grant_types: ['client_credentials'], response_types: [], redirect_uris: [],
      },
    ],
    jwks,
    cookies: { keys: ['mlflow-gate-test-op-cookie-key'] },
    claims: {
      openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'], groups: ['groups'],
    },
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups', 'mlflow'],
    // ID tokens carry the scopes' claims even in the code flow (the default keeps them for userinfo only).
    conformIdTokenClaims: false,
    pkce: { required: () => true },               // default: only for public clients
    ttl: {
      AccessToken: AT_TTL, ClientCredentials: AT_TTL, IdToken: 3600, RefreshToken: 86400, DeviceCode: 600,
      Interaction: 3600, Session: 86400, Grant: 86400,
    },
    findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => userClaims(sub) }),
    // First-party clients: every grant is implicit, so no consent page appears.
    loadExistingGrant: async (ctx) => {
      const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
      grant.addOIDCScope(SCOPES);
      grant.addOIDCClaims(['sub', 'email', 'email_verified', 'name', 'groups']);
      grant.addResourceScope(RESOURCE, RESOURCE_SCOPES);
      await grant.save();
      return grant;
    },
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    // JWT access tokens: a user's email and groups; a client's groups (client_credentials), never an email.
    extraTokenClaims: async (ctx, token) => {
      if (token.accountId) {
        const { email, groups } = userClaims(token.accountId);
        return { ...(email !== undefined ? { email } : {}), groups };
      }
      return { groups: groupsOf(token.clientId) };
    },
    features: {
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      deviceFlow: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      resourceIndicators: {                       // => RFC 9068 JWT access tokens for RESOURCE
        enabled: true,
        defaultResource: () => RESOURCE,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, indicator) => {
          if (indicator !== RESOURCE) throw new errors.InvalidTarget();
          return {
            scope: RESOURCE_SCOPES, audience: RESOURCE, accessTokenTTL: AT_TTL,
            accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
  };
}

// The kids of the live keystore, in the order /jwks publishes them (the first one signs).
const liveKids = () => JSON.parse(keysText).keys.map((k) => k.kid);

const server = http.createServer();
server.listen(PORT, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, configuration(JSON.parse(keysText)));

  // Why a request failed, in the log (tests/oidc/provider.py: OidcProvider.log()).
  provider.on('server_error', (ctx, err) => console.error(`server_error ${ctx.method} ${ctx.path}: ${err.stack}`));
  for (const event of ['authorization.error', 'grant.error', 'end_session.error', 'device_authorization.error',
    'code_verification.error', 'introspection.error', 'revocation.error', 'jwks.error', 'discovery.error']) {
    provider.on(event, (ctx, err) => console.log(`${event} ${ctx.method} ${ctx.path}: ${err.error || err.name}`
      + ` (${err.error_description || err.message})`));
  }

  // The dev pages @import fonts.googleapis.com: strip it so that a test browser never reaches for the internet.
  provider.use(async (ctx, next) => {
    await next();
    if (typeof ctx.body === 'string' && ctx.body.includes('fonts.googleapis.com')) {
      ctx.body = ctx.body.replace(/@import url\(https:\/\/fonts\.googleapis\.com[^)]*\);?/g, '');
    }
  });

  const applyKeys = (text, why) => {
    if (text === keysText) return false;
    initializeKeystore.call(provider, JSON.parse(text));   // throws on a bad set: the old keys stay
    keysText = text;
    console.log(`keys reloaded (${why}): ${liveKids().join(',')}`);
    return true;
  };
  fs.watchFile(KEYS, { interval: 100 }, () => {
    try {
      applyKeys(fs.readFileSync(KEYS, 'utf8'), 'key file changed');
    } catch (err) {
      console.error(`key file not applied: ${err.message}`);
    }
  });

  const answer = (res, status, body) => {
    res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
    res.end(JSON.stringify(body));
  };
  const readJson = (req) => new Promise((resolve, reject) => {
    let data = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => { data += chunk; });
    req.on('end', () => { try { resolve(data ? JSON.parse(data) : {}); } catch (err) { reject(err); } });
    req.on('error', reject);
  });
  // Test controls (not part of any standard): key rotation and the users' groups and claims, live.
  const control = async (req, res, pathname) => {
    try {
      if (req.method === 'POST' && (pathname === '/_op/rotate' || pathname === '/_op/drop-old')) {
        const { text } = changeKeys(pathname.slice('/_op/'.length));
        applyKeys(text, pathname);
        return answer(res, 200, { kids: liveKids() });
      }
      if (req.method === 'GET' && pathname === '/_op/kids') return answer(res, 200, { kids: liveKids() });
      if (req.method === 'PUT' && pathname === '/_op/users') {
        const body = await readJson(req);
        if (body.groups !== undefined) GROUPS = body.groups;
        if (body.claims !== undefined) CLAIMS = body.claims;
        return answer(res, 200, { groups: GROUPS, claims: CLAIMS });
      }
      return answer(res, 404, { error: 'not_found' });
    } catch (err) {
      return answer(res, 500, { error: 'server_error', error_description: err.message });
    }
  };

  const handle = provider.callback();
  server.on('request', (req, res) => {
    const pathname = (req.url || '/').split('?')[0];
    if (pathname.startsWith('/_op/')) control(req, res, pathname);
    else handle(req, res);
  });

  console.log(`OP_READY ${JSON.stringify({ issuer, port, pid: process.pid, resource: RESOURCE })}`);
});

if (process.env.OP_EXIT_ON_STDIN_EOF) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
