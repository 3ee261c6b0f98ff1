// A real OpenID provider for the interop tests: node server.mjs PORT
// Issues RFC 9068 JWT access tokens (typ at+jwt) by client_credentials for resource indicators,
// and opaque (reference) access tokens for https://opaque.portcullis.test, which resource
// servers check by introspection (RFC 7662) and clients revoke (RFC 7009).
// https://short.portcullis.test gets JWT access tokens that live 4 s, for renewal tests.
// Token exchange (RFC 8693) is not built into oidc-provider: it is registered below as a custom
// grant, which exchanges a valid JWT access token of this provider for one for another
// resource, with the caller's `sub` and the exchanging client in `act`.
// GET /test/introspections and GET /test/exchanges answer how many requests each served;
// POST /test/token-endpoint/fail and /recover make the token endpoint answer 503 or not.
// Browser logins: clients register themselves (RFC 7591, POST /reg) with their redirect and
// back-channel logout URIs; `test_access_token_ttl` in the registration sets how long their
// users' access tokens live. /interaction/UID is a one-field login form (any user name, no
// password) that grants the client openid, offline_access and the API's scopes at once.
// GET /test/backchannel-logouts answers how many logout tokens were delivered.
// POST /test/refresh/refuse and /allow make refresh grants fail with invalid_grant or not.
// GET /test/token-auth/last says whether the last token request authenticated with HTTP Basic
// (the provider takes a secret in the form or in Basic alike).
// A client whose back-channel logout URI is /test/tap?to=URL has its logout tokens delivered
// through the provider itself, which keeps the last one (GET /test/tap/last) for replay tests.
import Provider, { errors } from 'oidc-provider';
import { createRemoteJWKSet, jwtVerify } from 'jose';

const port = Number(process.argv[2] ?? 0);
const issuer = `http://127.0.0.1:${port}`;

const resources = {
  'https://api.portcullis.test': { scope: 'agents:read reports:read', audience: 'https://api.portcullis.test' },
  'https://other.portcullis.test': { scope: 'agents:read', audience: 'https://other.portcullis.test' },
  'https://opaque.portcullis.test': { scope: 'agents:read reports:read', audience: 'https://opaque.portcullis.test', format: 'opaque' },
  'https://short.portcullis.test': { scope: 'agents:read', audience: 'https://short.portcullis.test', ttl: 4 },
};

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN = 'urn:ietf:params:oauth:token-type:access_token';

function resourceServer(resource, client) {
  const info = resources[resource];
  if (!info) throw new errors.InvalidTarget(`unknown resource ${resource}`);
  const { format = 'jwt', ttl = 300, ...server } = info;
  const accessTokenTTL = client?.['test_access_token_ttl'] ?? ttl;
  return { ...server, accessTokenFormat: format, accessTokenTTL, jwt: { sign: { alg: 'RS256' } } };
}

const API = 'https://api.portcullis.test';
const html = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

// Exchanged tokens, with the subject they act for.
const exchanged = new WeakMap();

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'portcullis-test',
    client_secret: 'portcullis-test-secret-0123456789',
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
  }, {
    // The gateway, as an introspecting resource server, once per client authentication method.
    client_id: 'portcullis-gateway',
    client_secret: 'portcullis-gateway-secret-0123456789',
    grant_types: ['client_credentials', TOKEN_EXCHANGE],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
  }, {
    client_id: 'portcullis-gateway-post',
    client_secret: 'portcullis-gateway-post-secret-0123',
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_post',
  }],
  extraClientMetadata: { properties: ['test_access_token_ttl'] },
  // Its outgoing calls (back-channel logout) refuse loopback addresses, where every test
  // party lives: the test provider lets them through.
  fetch: (url, options) => {
    const { dispatcher, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: true,
  pkce: { required: () => true },
  ttl: { Session: 3600, Grant: 3600, RefreshToken: 3600, Interaction: 600 },
  cookies: { keys: ['portcullis-test-idp-cookie-key'] },
  features: {
    registration: { enabled: true },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      logoutSource: async (ctx, form) => {
        ctx.body = `<!DOCTYPE html><html><head><title>Sign out</title></head><body>
          <h1>Sign out of ${html(ctx.host)}?</h1>${form}
          <button id="logout" type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
          </body></html>`;
      },
    },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    devInteractions: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'https://api.portcullis.test',
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource, client) => resourceServer(resource, client),
    },
  },
  // Keycloak-shaped roles, so the same route policies apply.
  extraTokenClaims: (ctx, token) => ({ realm_access: { roles: ['agent'] }, ...exchanged.get(token) }),
  formats: {
    customizers: {
      // An exchanged token is about the caller's subject, not the exchanging client.
      jwt: (ctx, token, jwt) => {
        if (jwt.payload.exchanged_sub) {
          jwt.payload.sub = jwt.payload.exchanged_sub;
          delete jwt.payload.exchanged_sub;
        }
      },
    },
  },
});

const ownKeys = createRemoteJWKSet(new URL(`${issuer}/jwks`));
let exchanges = 0;
provider.registerGrantType(TOKEN_EXCHANGE, async (ctx) => {
  exchanges += 1;
  const { client, params } = ctx.oidc;
  if (params.subject_token_type !== ACCESS_TOKEN) {
    throw new errors.InvalidRequest('subject_token_type must be an access token');
  }
  let subject;
  try {
    ({ payload: subject } = await jwtVerify(params.subject_token, ownKeys, { issuer, typ: 'at+jwt' }));
  } catch (e) {
    throw new errors.InvalidGrant(`subject_token: ${e.code ?? e.message}`);
  }
  const target = params.resource ?? params.audience;
  const server = resourceServer(target);
  const scope = (params.scope ?? server.scope).split(' ').filter((s) => server.scope.split(' ').includes(s)).join(' ');
  const token = new provider.ClientCredentials({ client, scope: scope || undefined });
  token.resourceServer = new provider.ResourceServer(target, server);
  exchanged.set(token, { exchanged_sub: subject.sub, act: { sub: client.clientId } });
  const value = await token.save();
  ctx.body = {
    access_token: value,
    issued_token_type: ACCESS_TOKEN,
    token_type: 'Bearer',
    expires_in: token.expiration,
    scope: token.scope,
  };
}, ['subject_token', 'subject_token_type', 'requested_token_type', 'audience', 'resource', 'scope'], ['resource']);

// The login form and its answer: the user is whoever they say, and consents to everything.
async function interaction(ctx) {
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const { uid, prompt, params, session } = details;
  if (ctx.method === 'GET' && prompt.name === 'login') {
    ctx.type = 'html';
    ctx.body = `<!DOCTYPE html><html><head><title>Sign in</title></head><body>
      <form id="login" method="post" action="/interaction/${html(uid)}">
      <input id="username" name="login" autofocus>
      <button id="submit" type="submit">Sign in</button></form></body></html>`;
    return;
  }
  const form = ctx.method === 'POST' ? new URLSearchParams(await readBody(ctx)) : new URLSearchParams();
  const accountId = form.get('login') || session?.accountId;
  if (!accountId) throw new errors.InvalidRequest('no user');
  const grant = new provider.Grant({ accountId, clientId: params.client_id });
  grant.addOIDCScope('openid profile email offline_access');
  grant.addResourceScope(API, resources[API].scope);
  const grantId = await grant.save();
  await provider.interactionFinished(ctx.req, ctx.res, {
    login: { accountId },
    consent: { grantId },
  }, { mergeWithLastSubmission: false });
}

function readBody(ctx) {
  return new Promise((resolve, reject) => {
    let data = '';
    ctx.req.setEncoding('utf8');
    ctx.req.on('data', (chunk) => { data += chunk; });
    ctx.req.on('end', () => resolve(data));
    ctx.req.on('error', reject);
  });
}

let backchannelLogouts = 0;
provider.on('backchannel.success', () => { backchannelLogouts += 1; });
provider.on('backchannel.error', (ctx, err, client) => {
  console.log(`back-channel logout to ${client.clientId} failed: ${err.message}`);
});

let introspections = 0;
let tokenEndpointDown = false;
let refuseRefresh = false;
let lastTapped = null;
let lastTokenAuth = null;
provider.use(async (ctx, next) => {
  if (ctx.path === '/token') {
    lastTokenAuth = { basic: (ctx.headers.authorization ?? '').toLowerCase().startsWith('basic ') };
  }
  if (ctx.path === '/test/token-auth/last') {
    ctx.body = lastTokenAuth ?? {};
    return;
  }
  if (ctx.path === '/test/refresh/refuse' || ctx.path === '/test/refresh/allow') {
    refuseRefresh = ctx.path.endsWith('/refuse');
    ctx.body = { refusing: refuseRefresh };
    return;
  }
  if (ctx.path === '/test/tap/last') {
    ctx.body = { body: lastTapped };
    return;
  }
  if (ctx.path === '/test/tap') {
    lastTapped = await readBody(ctx);
    const answer = await fetch(ctx.query.to, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: lastTapped,
    });
    ctx.status = answer.status;
    ctx.body = await answer.text();
    return;
  }
  if (ctx.path === '/token' && refuseRefresh) {
    ctx.status = 400;
    ctx.body = { error: 'invalid_grant', error_description: 'grant revoked' };
    return;
  }
  if (ctx.path.startsWith('/interaction/')) {
    await interaction(ctx);
    return;
  }
  if (ctx.path === '/test/backchannel-logouts') {
    ctx.body = { count: backchannelLogouts };
    return;
  }
  if (ctx.path === '/test/introspections') {
    ctx.body = { count: introspections };
    return;
  }
  if (ctx.path === '/test/exchanges') {
    ctx.body = { count: exchanges };
    return;
  }
  if (ctx.path === '/test/token-endpoint/fail' || ctx.path === '/test/token-endpoint/recover') {
    tokenEndpointDown = ctx.path.endsWith('/fail');
    ctx.body = { down: tokenEndpointDown };
    return;
  }
  if (ctx.path === '/token' && tokenEndpointDown) {
    ctx.status = 503;
    ctx.body = { error: 'temporarily_unavailable' };
    return;
  }
  if (ctx.path === '/token/introspection') introspections += 1;
  await next();
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening at ${issuer}`);
});
